"""``cdcflow-operator``: run the operator, or print/write what it is generated from.

cdcflow-operator run [--namespace NS ... | --all-namespaces]   reconcile Pipelines
cdcflow-operator crd [--write | --check]                       crds/pipeline.yaml, chart copies
cdcflow-operator rbac                                          the ClusterRole
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdcflow-operator",
        description="The cdcflow Kubernetes operator: reconciles Pipeline resources "
        "(cdcflow.io/v1alpha1) and scales consumers from queue depth.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="Reconcile Pipelines (uses $KUBECONFIG or the pod's account).")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", help="Watch this namespace (repeatable)."
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="Watch every namespace.")
    run.add_argument("--verbose", action="store_true", help="Debug logs.")
    run.add_argument(
        "--liveness",
        metavar="URL",
        help="Serve kopf's liveness probe at this URL (the chart: http://0.0.0.0:8080/healthz); "
        "it fails when the operator's event loop stops answering.",
    )
    crd = sub.add_parser("crd", help="Print the CRD generated from the model.")
    mode = crd.add_mutually_exclusive_group()
    mode.add_argument(
        "--write",
        action="store_true",
        help="Write crds/pipeline.yaml, the spec table of docs/operator.md and the chart's "
        "copies (helm/cdcflow/crds/, files/rbac-rules.yaml) if changed.",
    )
    mode.add_argument(
        "--check", action="store_true", help="Exit 1 if crds/ or the chart's copies are stale."
    )
    sub.add_parser("rbac", help="Print the ClusterRole the operator needs.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "crd":
        from cdcflow_operator import crd

        if args.write:
            from cdcflow_operator import chart, reference

            for path, changed in (
                (crd.CRD_PATH, crd.write()),
                (reference.DOC_PATH, reference.write()),
                *chart.write(),
            ):
                sys.stdout.write(f"{path}: {'written' if changed else 'up to date'}\n")
        elif args.check:
            from cdcflow_operator import chart

            stale = chart.stale()
            if not crd.CRD_PATH.exists() or crd.CRD_PATH.read_text() != crd.render():
                stale.insert(0, crd.CRD_PATH)
            for path in stale:
                sys.stderr.write(f"{path} is stale: run `make crds`\n")
            if stale:
                return 1
        else:
            sys.stdout.write(crd.render())
        return 0
    if args.command == "rbac":
        from cdcflow_operator import rbac

        sys.stdout.write(yaml.safe_dump(rbac.cluster_role(), sort_keys=False))
        return 0
    import kopf

    from cdcflow_operator import handlers  # noqa: F401  (registers the handlers)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.all_namespaces:
        kopf.run(standalone=True, clusterwide=True, liveness_endpoint=args.liveness)
    else:
        kopf.run(
            standalone=True,
            namespaces=args.namespace or ["default"],
            liveness_endpoint=args.liveness,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
