{{/* The chart's name, at most 63 characters. */}}
{{- define "tokenpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, at most 63 characters. */}}
{{- define "tokenpool.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The labels that select the daemon's pods. */}}
{{- define "tokenpool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "tokenpool.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tokenpool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tokenpool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenpool.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Redis variables of the chosen mode; fails on an incomplete one. */}}
{{- define "tokenpool.redisEnv" -}}
{{- $r := .Values.redis }}
{{- if eq $r.mode "single" }}
{{- if $r.single.url }}
- name: REDIS_URL
  value: {{ $r.single.url | quote }}
{{- else if and .Values.secret.keys (not (hasKey .Values.secret.keys "REDIS_URL")) }}
{{- fail "redis.mode single: set redis.single.url, or map REDIS_URL in secret.keys (the embedded Redis serves one replica only)" }}
{{- end }}
{{- else if eq $r.mode "cluster" }}
{{- if not $r.cluster.addrs }}
{{- fail "redis.mode cluster: set redis.cluster.addrs" }}
{{- end }}
- name: REDIS_CLUSTER_ADDRS
  value: {{ join "," $r.cluster.addrs | quote }}
{{- else if eq $r.mode "sentinel" }}
{{- if or (not $r.sentinel.addrs) (not $r.sentinel.master) }}
{{- fail "redis.mode sentinel: set redis.sentinel.addrs and redis.sentinel.master" }}
{{- end }}
- name: REDIS_SENTINEL_ADDRS
  value: {{ join "," $r.sentinel.addrs | quote }}
- name: REDIS_SENTINEL_MASTER
  value: {{ $r.sentinel.master | quote }}
{{- else }}
{{- fail (printf "redis.mode %q: want single, cluster or sentinel" $r.mode) }}
{{- end }}
{{- if and (ne $r.mode "single") $r.username }}
- name: REDIS_USERNAME
  value: {{ $r.username | quote }}
{{- end }}
{{- if and (ne $r.mode "single") $r.tls }}
- name: REDIS_TLS
  value: "true"
{{- end }}
{{- if $r.waitReplicas }}
- name: TOKENPOOL_REDIS_WAIT_REPLICAS
  value: {{ $r.waitReplicas | quote }}
{{- end }}
{{- end }}
