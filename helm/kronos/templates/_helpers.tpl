{{- define "kronos.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kronos.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "kronos.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "kronos.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kronos.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kronos.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Clustered: a shared store, so several stateless nodes that gossip. */}}
{{- define "kronos.clustered" -}}
{{- if ne .Values.store.type "bolt" }}true{{ end }}
{{- end }}

{{- define "kronos.secretName" -}}
{{- include "kronos.fullname" . }}
{{- end }}

{{/* A cluster given no gossip key gets a random one (gossip-key.yaml). */}}
{{- define "kronos.generateGossipKey" -}}
{{- if and (include "kronos.clustered" .) (not .Values.cluster.gossipKey) (not .Values.cluster.existingSecret) }}true{{ end }}
{{- end }}

{{/* The Secret holding the gossip key, under "gossip-key". */}}
{{- define "kronos.gossipSecretName" -}}
{{- if .Values.cluster.existingSecret }}
{{- .Values.cluster.existingSecret }}
{{- else if .Values.cluster.gossipKey }}
{{- include "kronos.secretName" . }}
{{- else }}
{{- include "kronos.fullname" . }}-gossip-key
{{- end }}
{{- end }}

{{/* Refuse value sets that cannot work. */}}
{{- define "kronos.validate" -}}
{{- if eq .Values.store.type "bolt" }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail "store.type bolt (the embedded store) runs one replica only: set replicaCount to 1, or use store.type postgres or rethinkdb" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "store.type bolt (the embedded store) cannot autoscale: use store.type postgres or rethinkdb" }}
{{- end }}
{{- else }}
{{- if .Values.backup.enabled }}
{{- fail (printf "backup.enabled copies the embedded store (store.type bolt); back up %s with its own tools, or copy it with kronos migrate" .Values.store.type) }}
{{- end }}
{{- if and (not .Values.store.url) (not .Values.store.existingSecret) }}
{{- fail (printf "store.type %s needs store.url or store.existingSecret" .Values.store.type) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret with tls.crt and tls.key (cert-manager's Certificate makes one)" }}
{{- end }}
{{- if and .Values.tls.required (not .Values.tls.enabled) }}
{{- fail "tls.required needs tls.enabled and tls.secretName" }}
{{- end }}
{{- $drain := int .Values.cluster.drainPeriodSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add $drain (int .Values.preStopSleepSeconds) 5) }}
{{- fail (printf "terminationGracePeriodSeconds %d must exceed preStopSleepSeconds + cluster.drainPeriodSeconds + 5 (%d)" (int .Values.terminationGracePeriodSeconds) (add $drain (int .Values.preStopSleepSeconds) 5)) }}
{{- end }}
{{- end }}

{{/* Labels of the backup job's pods: not the nodes' selector labels, so
that no Service sends clients to them. */}}
{{- define "kronos.backupLabels" -}}
app.kubernetes.io/name: {{ include "kronos.name" . }}-backup
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: backup
{{- end }}

{{/* The PromQL matchers of this release's nodes. */}}
{{- define "kronos.ruleSelector" -}}
{{- .Values.prometheusRule.selector | default (printf "job=%q, namespace=%q" (printf "%s-admin" (include "kronos.fullname" .)) .Release.Namespace) }}
{{- end }}
