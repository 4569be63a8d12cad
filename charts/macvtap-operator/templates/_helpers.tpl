{{/* Chart name, overridable. */}}
{{- define "macvtap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name; short enough that "-operator-metrics" still fits 63 characters. */}}
{{- define "macvtap.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "macvtap.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "macvtap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: macvtap-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "operator"). */}}
{{- define "macvtap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "macvtap.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "macvtap.componentLabels" -}}
{{ include "macvtap.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "macvtap.operator.serviceAccountName" -}}
{{- default (printf "%s-operator" (include "macvtap.fullname" .)) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "macvtap.agent.serviceAccountName" -}}
{{- default (printf "%s-agent" (include "macvtap.fullname" .)) .Values.agent.serviceAccount.name }}
{{- end }}

{{- define "macvtap.operator.leaseName" -}}
{{- default (printf "%s-operator" (include "macvtap.fullname" .)) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* Image reference: include with (dict "image" .Values.operator.image "ctx" $). Digest wins over the tag. */}}
{{- define "macvtap.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the agent serves DP_MACVTAP_CONF; [] counts as set: it means discovery. */}}
{{- define "macvtap.legacyEnabled" -}}
{{- if kindIs "slice" .Values.legacyConfig }}true{{ end }}
{{- end }}

{{/* The agent's admin port (/metrics, /healthz, /readyz): agent.metricsPort, or the deprecated agent.port when a
values file still sets it. */}}
{{- define "macvtap.agent.metricsPort" -}}
{{- if hasKey .Values.agent "port" }}{{ .Values.agent.port }}{{ else }}{{ .Values.agent.metricsPort }}{{ end }}
{{- end }}

{{/* The injector's objects: the Service the API server dials, the Secret of its certificates, the webhook
configurations (cluster-scoped: named after the release). */}}
{{- define "macvtap.injector.serviceName" -}}
{{- printf "%s-webhook" (include "macvtap.fullname" .) }}
{{- end }}

{{- define "macvtap.injector.secretName" -}}
{{- printf "%s-webhook-tls" (include "macvtap.fullname" .) }}
{{- end }}

{{- define "macvtap.injector.mutatingName" -}}
{{- printf "%s-injector" (include "macvtap.fullname" .) }}
{{- end }}

{{- define "macvtap.injector.validatingName" -}}
{{- printf "%s-nad-warnings" (include "macvtap.fullname" .) }}
{{- end }}

{{/* True (non-empty) when the operator serves the webhooks. */}}
{{- define "macvtap.injector.enabled" -}}
{{- if and .Values.operator.enabled .Values.injector.enabled }}true{{ end }}
{{- end }}
