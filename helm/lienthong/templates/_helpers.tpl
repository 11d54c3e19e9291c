{{/* Names, labels and the pieces every lienthong pod shares. */}}

{{- define "lienthong.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lienthong.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "lienthong.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "lienthong.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lienthong.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "lienthong.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "lienthong.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lienthong.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lienthong.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The registry every pod talks to: this release's own in national mode; in province mode the national registry
at registry.url (verified with the mesh CA of pki.caConfigMap, which the national operator hands out). */}}
{{- define "lienthong.registryUrl" -}}
{{- if eq .Values.mode "province" -}}
{{ required "registry.url: a province installs against the national registry: give its https:// URL" .Values.registry.url }}
{{- else -}}
https://{{ include "lienthong.fullname" . }}-registry:{{ .Values.registry.port }}
{{- end -}}
{{- end -}}

{{/* The base URL a gateway is registered with, which other gateways forward calls to: gateways[].baseUrl, or its
Service inside the cluster. Called with (list $ $gw). */}}
{{- define "lienthong.gatewayUrl" -}}
{{- $root := index . 0 }}{{ $gw := index . 1 -}}
{{ $gw.baseUrl | default (printf "https://%s-gateway-%s.%s.svc:%v" (include "lienthong.fullname" $root) $gw.code $root.Release.Namespace $root.Values.gatewayDefaults.port) }}
{{- end -}}

{{/* Where every pod keeps its TLS files (tls.key, tls.crt, ca.crt: the --tls-dir of every lienthong command) and
the mesh CA certificate it verifies the registry with (--registry-ca). */}}
{{- define "lienthong.tlsDir" -}}
/var/run/lienthong/tls
{{- end -}}
{{- define "lienthong.meshCaFile" -}}
/etc/lienthong/mesh-ca/ca.crt
{{- end -}}

{{/* The volume `tls` of a pod: its TLS Secret (kubernetes.io/tls with ca.crt, as cert-manager writes it) when one is
named, else an emptyDir that an init container fills at start and the process renews in place. Called with the
Secret's name (empty for the default). */}}
{{- define "lienthong.tlsVolume" -}}
- name: tls
{{- if . }}
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
{{- else }}
  emptyDir:
    medium: Memory
{{- end }}
{{- end -}}

{{/* The volume `mesh-ca`: the mesh CA certificate alone, from a ConfigMap, so no pod but the registry's ever names
the Secret that holds the CA key. */}}
{{- define "lienthong.meshCaVolume" -}}
- name: mesh-ca
  configMap:
    name: {{ .Values.pki.caConfigMap.name }}
    items:
      - key: {{ .Values.pki.caConfigMap.key }}
        path: ca.crt
{{- end -}}

{{/* REDIS_URL for every component: from a Secret, the external URL, or the embedded StatefulSet. Passed in the
environment, never on the command line, so a password in the URL does not show in the process list. */}}
{{- define "lienthong.redisEnv" -}}
- name: REDIS_URL
{{- if .Values.redis.urlSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.urlSecret.name }}
      key: {{ .Values.redis.urlSecret.key }}
{{- else if .Values.redis.url }}
  value: {{ .Values.redis.url | quote }}
{{- else if .Values.redis.embedded.enabled }}
  value: {{ printf "redis://%s-redis:%v/0" (include "lienthong.fullname" .) .Values.redis.embedded.port | quote }}
{{- else }}
{{- fail "set redis.url, redis.urlSecret.name, or redis.embedded.enabled: every component needs the shared Redis" }}
{{- end }}
{{- end -}}

{{/* The environment every lienthong process gets: no bytecode writes on the read-only root, a writable HOME. */}}
{{- define "lienthong.commonEnv" -}}
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
- name: HOME
  value: /tmp
{{- end -}}

{{/* Pod-level settings shared by every lienthong pod. Service links are off: Kubernetes would otherwise inject
variables such as LIENTHONG_REGISTRY_PORT=tcp://... that the lienthong CLI reads as its own options. */}}
{{- define "lienthong.podSpecCommon" -}}
enableServiceLinks: false
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}
