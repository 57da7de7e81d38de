{{- define "stoa-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stoa-operator.selectorLabels" -}}
app.kubernetes.io/name: stoa-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "stoa-operator.labels" -}}
{{ include "stoa-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Namespaced RBAC by default; cluster RBAC only with clusterWide. */}}
{{- define "stoa-operator.roleKind" -}}
{{- if .Values.clusterWide -}}ClusterRole{{- else -}}Role{{- end -}}
{{- end -}}

{{/* The one namespace watched (empty with clusterWide). */}}
{{- define "stoa-operator.watchNamespace" -}}
{{- if .Values.clusterWide -}}
{{- if .Values.watchNamespace -}}
{{- fail "set either clusterWide: true or watchNamespace, not both" -}}
{{- end -}}
{{- else -}}
{{- .Values.watchNamespace | default .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* files/rules.yaml with the SLOs and the runbook address of the values filled in. */}}
{{- define "stoa-operator.rules" -}}
{{- $slo := .Values.metrics.slo -}}
{{- .Files.Get "files/rules.yaml"
    | replace "__AVAILABILITY_OBJECTIVE__" (toString $slo.availability)
    | replace "__LATENCY_OBJECTIVE__" (toString $slo.latency.objective)
    | replace "__LATENCY_THRESHOLD__" $slo.latency.threshold
    | replace "__RUNBOOK_URL__" .Values.metrics.prometheusRule.runbookBaseUrl -}}
{{- end -}}
