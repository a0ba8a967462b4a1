{{/* The Airflow release these objects belong to. */}}
{{- define "platform.release" -}}
{{- required "platform.airflowRelease: the Airflow release name" .Values.platform.airflowRelease -}}
{{- end }}

{{/* Labels of an object or pod of COMPONENT, as the Airflow chart labels its own. */}}
{{- define "platform.labels" -}}
tier: airflow
component: {{ .component }}
release: {{ include "platform.release" .root }}
{{- end }}
