{{/* Names and labels shared by every template. */}}

{{- define "cdcflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name alone when it already contains the chart's. */}}
{{- define "cdcflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cdcflow.operatorName" -}}
{{- printf "%s-operator" (include "cdcflow.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cdcflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cdcflow.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* The operator pod's part-of and component labels are cdcflow.naming.OPERATOR_POD_LABELS:
the Pipelines' NetworkPolicies admit the operator by exactly these two (tests/chart checks). */ -}}
{{- define "cdcflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdcflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "cdcflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "cdcflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cdcflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "cdcflow.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if hasPrefix "@" $tag -}}
{{- printf "%s%s" .Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}
