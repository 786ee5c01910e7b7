{{/* Names and labels shared by every template. */}}
{{- define "codeserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "codeserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "codeserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "codeserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "codeserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "codeserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- /* The server's pods (not the router's): what the Service, PDB and workloads select. */ -}}
{{- define "codeserve.serverSelectorLabels" -}}
{{ include "codeserve.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "codeserve.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.image.flavor) -}}
{{ printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "codeserve.secretName" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "codeserve.fullname" .)) }}
{{- end }}

{{- define "codeserve.apiKeysEnabled" -}}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.create }}true{{ end }}
{{- end }}

{{/* The codeserve container, shared by the Deployment and the multi-node leader. */}}
{{- define "codeserve.container" -}}
- name: codeserve
  image: {{ include "codeserve.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- with .command }}
  command: {{ toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: http
      containerPort: 8000
      protocol: TCP
  envFrom:
    - configMapRef:
        name: {{ include "codeserve.fullname" . }}
  env:
    {{- if include "codeserve.apiKeysEnabled" . }}
    - name: CODESERVE_API_KEYS
      valueFrom:
        secretKeyRef:
          name: {{ include "codeserve.secretName" . }}
          key: {{ .Values.apiKeys.secretKey }}
    {{- end }}
  startupProbe:
    httpGet: {path: /health, port: http}
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  livenessProbe:
    httpGet: {path: /health, port: http}
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  readinessProbe:
    httpGet: {path: /ready, port: http}
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  resources:
    {{- $resources := deepCopy .Values.resources }}
    {{- if gt (int .Values.gpu.count) 0 }}
    {{- $_ := set $resources "limits" (merge (dict .Values.gpu.resourceName (int .Values.gpu.count)) ($resources.limits | default dict)) }}
    {{- $_ := set $resources "requests" (merge (dict .Values.gpu.resourceName (int .Values.gpu.count)) ($resources.requests | default dict)) }}
    {{- end }}
    {{- toYaml $resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: cache
      mountPath: /cache
    - name: shm
      mountPath: /dev/shm
{{- end }}

{{/* Pod-level fields shared by the Deployment and the multi-node groups. */}}
{{- define "codeserve.podSpec" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{ toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- with .Values.nodeSelector }}
nodeSelector: {{ toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{ toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity: {{ toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: cache
    {{- if .Values.persistence.enabled }}
    persistentVolumeClaim:
      claimName: {{ .Values.persistence.existingClaim | default (include "codeserve.fullname" .) }}
    {{- else }}
    emptyDir: {}
    {{- end }}
  - name: shm
    emptyDir:
      medium: Memory
      sizeLimit: {{ .Values.shm.sizeLimit }}
{{- end }}
