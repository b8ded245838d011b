{{- define "kernelbus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "kernelbus.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kernelbus.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The client URLs of the bus: the operator's cluster or the chart's. */}}
{{- define "kernelbus.natsURL" -}}
{{- if .Values.nats.url -}}
{{ .Values.nats.url }}
{{- else if .Values.nats.cluster.enabled -}}
{{- $n := include "kernelbus.fullname" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.nats.cluster.replicas) -}}
{{- $urls = append $urls (printf "nats://%s-nats-%d.%s-nats.%s.svc:%d" $n $i $n $.Release.Namespace (int $.Values.nats.cluster.ports.client)) -}}
{{- end -}}
{{ join "," $urls }}
{{- else -}}
{{ fail "nats.url is required (an existing NATS cluster), or set nats.cluster.enabled=true" }}
{{- end -}}
{{- end -}}

{{- define "kernelbus.natsArgs" -}}
- --nats={{ include "kernelbus.natsURL" . }}
- --replicas={{ .Values.nats.replicas | default (ternary .Values.nats.cluster.replicas 1 (and .Values.nats.cluster.enabled (not .Values.nats.url))) }}
{{- if .Values.nats.caSecret }}
- --nats-ca=/etc/kernelbus/nats-ca/ca.crt
{{- end }}
{{- end -}}

{{- define "kernelbus.caVolume" -}}
{{- if .Values.nats.caSecret }}
- name: nats-ca
  secret:
    secretName: {{ .Values.nats.caSecret }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end -}}

{{- define "kernelbus.caMount" -}}
{{- if .Values.nats.caSecret }}
- {name: nats-ca, mountPath: /etc/kernelbus/nats-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "kernelbus.specsVolume" -}}
{{- if .Values.kernelspecs }}
- name: kernelspecs
  configMap:
    name: {{ include "kernelbus.fullname" . }}-kernelspecs
    items:
    {{- range $spec, $files := .Values.kernelspecs }}
    {{- range $file, $_ := $files }}
      - {key: {{ printf "%s_%s" $spec $file | quote }}, path: {{ printf "%s/%s" $spec $file | quote }}}
    {{- end }}
    {{- end }}
{{- end }}
{{- end -}}

{{- define "kernelbus.specsMount" -}}
{{- if .Values.kernelspecs }}
- {name: kernelspecs, mountPath: /etc/kernelbus/kernelspecs, readOnly: true}
{{- end }}
{{- end -}}

{{/* What front-ends and workers must agree on: the kernelspecs and the
start-request policy (workers apply it again). */}}
{{- define "kernelbus.specArgs" -}}
{{- if .Values.kernelspecs }}
- --kernelspec-dir=/etc/kernelbus/kernelspecs
{{- end }}
{{- with .Values.allowedEnv }}
- --allowed-env={{ . }}
{{- end }}
{{- with .Values.maxEnvBytes }}
- --max-env-bytes={{ . }}
{{- end }}
{{- end -}}
