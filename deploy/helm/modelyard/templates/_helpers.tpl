{{/* Names and labels shared by every template. */}}
{{- define "modelyard.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelyard.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "modelyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "modelyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "modelyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Secret the pods read their env from: the user's, or the chart's (which needs a master key). */}}
{{- define "modelyard.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "modelyard.fullname" . }}
{{- end }}
{{- end }}

{{/* Seconds the gateway waits for the load balancer after SIGTERM (config drain.grace_s), rounded up. */}}
{{- define "modelyard.drainGrace" -}}
{{- (default 5 .Values.config.drain.grace_s) | ceil | int }}
{{- end }}

{{/* preStop (the endpoint removal racing SIGTERM) + the gateway's grace + its deadline for streams + 15 s
to flush the spend log and exit: Kubernetes must not SIGKILL before the drain is over. */}}
{{- define "modelyard.terminationGrace" -}}
{{- $grace := include "modelyard.drainGrace" . | int }}
{{- $deadline := (default 60 .Values.config.drain.deadline_s) | ceil | int }}
{{- add $grace $grace $deadline 15 }}
{{- end }}

{{- define "modelyard.claimName" -}}
{{- default (printf "%s-spool" (include "modelyard.fullname" .)) .Values.spool.persistence.existingClaim }}
{{- end }}
