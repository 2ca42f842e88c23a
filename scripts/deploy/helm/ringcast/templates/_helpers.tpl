{{- define "ringcast.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ringcast.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ringcast.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The headless Service of the nodes: gossip seeds for everybody. */}}
{{- define "ringcast.seeds" -}}
dns:{{ include "ringcast.fullname" . }}-node.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:7946
{{- end -}}

{{- define "ringcast.secretName" -}}
{{- if .Values.clusterKey.existingSecret -}}
{{- .Values.clusterKey.existingSecret -}}
{{- else -}}
{{- include "ringcast.fullname" . }}-cluster-key
{{- end -}}
{{- end -}}

{{/* Environment both components share. */}}
{{- define "ringcast.env" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: RINGCAST_ID
  value: $(POD_NAME)
- name: RINGCAST_GOSSIP
  value: 0.0.0.0:7946
- name: RINGCAST_GOSSIP_ADVERTISE
  value: $(POD_IP):7946
- name: RINGCAST_JOIN
  value: {{ include "ringcast.seeds" . }}
- name: RINGCAST_CLUSTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "ringcast.secretName" . }}
      key: {{ .Values.clusterKey.secretKey }}
- name: RINGCAST_DETECT
  value: {{ .Values.detect | quote }}
- name: RINGCAST_LOG
  value: {{ .Values.log | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ringcast.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}
