{{- define "roundhouse.name" -}}roundhouse{{- end -}}
{{- define "roundhouse.fullname" -}}
{{- if contains "roundhouse" .Release.Name }}{{ .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}{{ .Release.Name | trunc 40 | trimSuffix "-" }}-roundhouse{{ end }}
{{- end -}}
{{- define "roundhouse.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "roundhouse.engineNamespace" -}}{{ .Values.gateway.engineNamespace | default .Release.Namespace }}{{- end -}}
{{- define "roundhouse.labels" -}}
app.kubernetes.io/name: roundhouse
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "roundhouse.selector" -}}
app.kubernetes.io/name: roundhouse
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}
{{- define "roundhouse.operatorSA" -}}{{ include "roundhouse.fullname" . }}-operator{{- end -}}
{{- define "roundhouse.gatewaySA" -}}{{ include "roundhouse.fullname" . }}-gateway{{- end -}}
{{- define "roundhouse.apiKeysSecret" -}}{{ .Values.gateway.apiKeys.existingSecret | default (printf "%s-api-keys" (include "roundhouse.fullname" .)) }}{{- end -}}
{{- define "roundhouse.adminKeysSecret" -}}{{ .Values.gateway.admin.existingSecret | default (printf "%s-admin-keys" (include "roundhouse.fullname" .)) }}{{- end -}}
