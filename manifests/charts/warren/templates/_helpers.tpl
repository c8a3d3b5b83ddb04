{{/* Labels on every object of the chart. */}}
{{- define "warren.labels" -}}
app.kubernetes.io/part-of: warren
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The image reference of one component: (list $ "warren-controller"). */}}
{{- define "warren.image" -}}
{{- $root := index . 0 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry (index . 1) (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{/* The controller's Service address of a port: (list $ 15012). */}}
{{- define "warren.controllerAddr" -}}
{{- printf "warren-controller.%s.svc:%v" (index . 0).Release.Namespace (index . 1) -}}
{{- end -}}

{{/* Image pull secrets of a pod spec. */}}
{{- define "warren.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}
