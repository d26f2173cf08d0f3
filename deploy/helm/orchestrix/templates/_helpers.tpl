{{/* The chart's name, truncated for label values. */}}
{{- define "orchestrix.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's prefix for object names. */}}
{{- define "orchestrix.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; pass (dict "root" $ "component" "relay"). */}}
{{- define "orchestrix.labels" -}}
app.kubernetes.io/name: {{ include "orchestrix.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* Selector labels; pass (dict "root" $ "component" "relay"). */}}
{{- define "orchestrix.selector" -}}
app.kubernetes.io/name: {{ include "orchestrix.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "orchestrix.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* Environment shared by every container that reaches Kafka. */}}
{{- define "orchestrix.kafkaEnv" -}}
{{ include "orchestrix.kafkaEnvFor" (dict "root" . "context" .Values.context) }}
{{- end -}}

{{/* The same for another context (a service of its own topics); pass
(dict "root" $ "context" "notifications"). */}}
{{- define "orchestrix.kafkaEnvFor" -}}
- name: KAFKA_BROKERS
  value: {{ .root.Values.kafka.brokers | quote }}
- name: ORCHESTRIX_CONTEXT
  value: {{ .context | quote }}
- name: ORCHESTRIX_SCHEMA
  value: {{ .root.Values.schema | quote }}
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* envFrom of the Kafka TLS/SASL Secret, when there is one. */}}
{{- define "orchestrix.kafkaEnvFrom" -}}
{{- if .Values.kafka.secretName }}
- secretRef:
    name: {{ .Values.kafka.secretName }}
{{- end }}
{{- end -}}

{{/* The Kafka files volume (CA, certificates, token). */}}
{{- define "orchestrix.kafkaVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.kafka.filesSecretName }}
- name: kafka-files
  secret:
    secretName: {{ .Values.kafka.filesSecretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "orchestrix.kafkaMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.filesSecretName }}
- name: kafka-files
  mountPath: /etc/orchestrix/kafka
  readOnly: true
{{- end }}
{{- end -}}

{{/* Probes on /livez and /readyz of port; pass (dict "port" 8080). */}}
{{- define "orchestrix.probes" -}}
startupProbe:
  httpGet: {path: /livez, port: http}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /livez, port: http}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* Pod spec fields of every workload. The Jobs are hooks that run
before the chart's ServiceAccount exists: they use the namespace's
default one, also without a token. */}}
{{- define "orchestrix.podCommon" -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The environment, security context and mounts of a topics step. */}}
{{- define "orchestrix.topicsStep" -}}
env:
  {{- include "orchestrix.kafkaEnv" . | nindent 2 }}
{{- with (include "orchestrix.kafkaEnvFrom" .) }}
envFrom:
  {{- . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  {{- include "orchestrix.kafkaMounts" . | nindent 2 }}
{{- end -}}
