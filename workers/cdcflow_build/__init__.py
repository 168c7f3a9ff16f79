"""Build steps that generate committed files (not shipped in the wheel).

They may use development-only packages, such as Grafana's SDK for the dashboards;
`make generate` runs them and tests check the committed output equals theirs.
"""
