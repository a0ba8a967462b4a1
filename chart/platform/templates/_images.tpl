{{- /* repository:tag, or repository:tag@digest once the digest is set (pulled by digest). */ -}}
{{- define "airflow-platform.image" -}}
{{- if .digest -}}
{{ .repository }}:{{ .tag }}@{{ .digest }}
{{- else -}}
{{ .repository }}:{{ .tag }}
{{- end -}}
{{- end -}}
