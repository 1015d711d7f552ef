{{/*
The Deployment of one stage. Every stage is rendered by this one helper
(templates/deployments.yaml ranges over .Values.stages). Takes a stage context:
(dict "root" $ "name" "<stage>" "stage" <values of the stage>).
*/}}
{{- define "si.deployment" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
{{- $name := .name -}}
{{- include "si.validateStage" . -}}
{{- $ports := include "si.stagePorts" . | fromJson -}}
{{- $probes := mergeOverwrite (deepCopy $root.Values.probes) ($stage.probes | default dict) -}}
{{- $autoscaled := or (and $stage.autoscaling $stage.autoscaling.enabled) (and $stage.keda $stage.keda.enabled) -}}
{{- $component := dict "root" $root "name" $name -}}
{{- $podAnnotations := include "si.mergedMap" (dict "stage" $stage "root" $root "key" "podAnnotations") | fromJson -}}
{{- $podLabels := include "si.mergedMap" (dict "stage" $stage "root" $root "key" "podLabels") | fromJson -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "si.stageFullname" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "si.componentLabels" $component | nindent 4 }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ $stage.replicas | default 1 }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "si.componentSelectorLabels" $component | nindent 6 }}
  {{- with $stage.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "si.componentLabels" $component | nindent 8 }}
        {{- with $podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- /* Roll the pods when a chart-created credential changes. */}}
        checksum/secrets: {{ list (include "si.twilioSecretData" $root) (include "si.kafkaSecretData" $root) (include "si.registrySecretData" $root) | toJson | sha256sum }}
        {{- with $podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "si.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- /* Service links would inject KAFKA_PORT & co. for a Service named
      "kafka", which the KAFKA_* pass-through would hand to librdkafka. */}}
      enableServiceLinks: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $stage.terminationGracePeriodSeconds | default $root.Values.terminationGracePeriodSeconds }}
      {{- with ($stage.priorityClassName | default $root.Values.priorityClassName) }}
      priorityClassName: {{ . }}
      {{- end }}
      containers:
        - name: {{ $name }}
          image: {{ include "si.image" . | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml $stage.command | nindent 12 }}
          {{- with $stage.args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          ports:
            {{- if hasKey $ports "http" }}
            - name: http
              containerPort: {{ $ports.http }}
              protocol: TCP
            {{- end }}
            - name: admin
              containerPort: {{ $ports.admin }}
              protocol: TCP
          env:
            {{- include "si.env" . | trim | nindent 12 }}
          startupProbe:
            httpGet:
              path: /healthz
              port: admin
            {{- toYaml $probes.startup | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: admin
            {{- toYaml $probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: admin
            {{- toYaml $probes.readiness | nindent 12 }}
          resources:
            {{- toYaml $stage.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          {{- with $stage.lifecycle }}
          lifecycle:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            {{- include "si.volumeMounts" . | nindent 12 }}
      volumes:
        {{- include "si.volumes" . | nindent 8 }}
      {{- with (include "si.mergedMap" (dict "stage" $stage "root" $root "key" "nodeSelector") | fromJson) }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with (include "si.stageOrGlobal" (dict "stage" $stage "root" $root "key" "tolerations") | fromJsonArray) }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with (include "si.stageOrGlobal" (dict "stage" $stage "root" $root "key" "affinity") | fromJson) }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with (include "si.stageOrGlobal" (dict "stage" $stage "root" $root "key" "topologySpreadConstraints") | fromJsonArray) }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* Whether the stage mounts the Twilio Secret as files (stages.<stage>.twilioCredentialsMount). */}}
{{/* Whether the media store's claim is mounted: the media stage, persistence on. */}}
{{- define "si.mediaStoreMounted" -}}
{{- if and (eq (.name | default "") "media") .root.Values.mediaStore.persistence.enabled }}true{{ end -}}
{{- end -}}

{{- define "si.mediaStoreClaim" -}}
{{- .Values.mediaStore.persistence.existingClaim | default (include "si.suffixedName" (dict "root" . "suffix" "media")) -}}
{{- end -}}

{{- define "si.twilioCredentialsMounted" -}}
{{- $m := .stage.twilioCredentialsMount -}}
{{- if and $m $m.enabled }}true{{ end -}}
{{- end -}}

{{/* Volume mounts of a stage or the setup Job: /tmp, the Kafka CA, the Twilio credentials, extras. */}}
{{- define "si.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "si.twilioCredentialsMounted" . }}
- name: twilio-credentials
  mountPath: {{ .stage.twilioCredentialsMount.mountPath }}
  readOnly: true
{{- end }}
{{- if include "si.kafkaCaMounted" .root }}
- name: kafka-tls
  mountPath: {{ .root.Values.kafka.tls.mountPath }}
  readOnly: true
{{- end }}
{{- if include "si.mediaStoreMounted" . }}
- name: media-store
  mountPath: {{ .root.Values.mediaStore.persistence.mountPath }}
{{- end }}
{{- with .root.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- with .stage.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "si.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmpVolume.sizeLimit }}
{{- if include "si.twilioCredentialsMounted" . }}
{{- /* The stage's own Twilio secrets (its twilioEnv), each as the file the
binary reads (twilio-credentials/src/lib.rs, ingress/src/secrets.rs), whatever
the key is called in the Secret: a stage sees no secret it does not use.
Optional: a key that is absent (the unused half of token vs. API key, no
secondary token) is just no file. No subPath, so the kubelet swaps rotated
values in place. */}}
{{- $keys := .root.Values.twilio.secretKeys }}
{{- $files := dict "TWILIO_AUTH_TOKEN" "auth-token" "TWILIO_AUTH_TOKEN_SECONDARY" "auth-token-secondary" "TWILIO_WEBHOOK_SHARED_SECRET" "webhook-shared-secret" "TWILIO_API_KEY_SID" "api-key-sid" "TWILIO_API_KEY_SECRET" "api-key-secret" }}
{{- /* An empty items list would project every key of the Secret. */}}
{{- $mounted := 0 }}
{{- range $var, $_ := (.stage.twilioEnv | default dict) }}
{{- if hasKey $files $var }}{{ $mounted = add1 $mounted }}{{ end }}
{{- end }}
{{- if eq $mounted 0 }}
{{- fail (printf "twilioCredentialsMount is on for a stage whose twilioEnv names none of %s: there is nothing of its own to mount (turn the mount off)" (keys $files | sortAlpha | join ", ")) }}
{{- end }}
- name: twilio-credentials
  secret:
    secretName: {{ include "si.twilioSecretName" .root }}
    optional: true
    defaultMode: 288 # 0440: readable by the pod's fsGroup only
    items:
{{- range $var, $mode := (.stage.twilioEnv | default dict) }}
{{- if hasKey $files $var }}
      - key: {{ get $keys $var }}
        path: {{ get $files $var }}
{{- end }}
{{- end }}
{{- end }}
{{- if include "si.kafkaCaMounted" .root }}
- name: kafka-tls
  secret:
    secretName: {{ include "si.kafkaCaSecretName" (dict "root" .root "hook" (.hook | default false)) }}
    items:
      - key: {{ .root.Values.kafka.tls.caKey }}
        path: ca.crt
{{- end }}
{{- if include "si.mediaStoreMounted" . }}
- name: media-store
  persistentVolumeClaim:
    claimName: {{ include "si.mediaStoreClaim" .root }}
{{- end }}
{{- with .root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- with .stage.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}
