{{/*
Names and labels.
Most helpers below take a stage context: (dict "root" $ "name" "<stage>" "stage" <values of the stage>).
*/}}

{{- define "si.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "si.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<suffix>, within 63 characters. Takes (dict "root" $ "suffix" "x"). */}}
{{- define "si.suffixedName" -}}
{{- $max := sub 62 (len .suffix) | int -}}
{{- printf "%s-%s" (include "si.fullname" .root | trunc $max | trimSuffix "-") .suffix -}}
{{- end -}}

{{- define "si.stageFullname" -}}
{{- include "si.suffixedName" (dict "root" .root "suffix" .name) -}}
{{- end -}}

{{- define "si.chartLabel" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "si.selectorLabels" -}}
app.kubernetes.io/name: {{ include "si.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "si.labels" -}}
helm.sh/chart: {{ include "si.chartLabel" . }}
{{ include "si.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: si-twilio-channel
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component (a stage, "setup", "helm-test"). Takes (dict "root" $ "name" "x"). */}}
{{- define "si.componentLabels" -}}
{{ include "si.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "si.componentSelectorLabels" -}}
{{ include "si.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "si.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "si.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image of a stage (its own image.* wins over the chart's). Takes a stage context. */}}
{{- define "si.image" -}}
{{- $img := .root.Values.image -}}
{{- $own := .stage.image | default dict -}}
{{- $repo := $own.repository | default $img.repository -}}
{{- $digest := $own.digest | default $img.digest -}}
{{- $tag := $own.tag | default $img.tag | default .root.Chart.AppVersion -}}
{{- if $digest -}}
{{- printf "%s@%s" $repo $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}
{{- end -}}

{{/*
Secrets.
*/}}

{{- define "si.twilioSecretName" -}}
{{- .Values.twilio.existingSecret | default (include "si.suffixedName" (dict "root" . "suffix" "twilio")) -}}
{{- end -}}

{{/* Chart-created Kafka credentials Secret; the hook Job reads a hook-scoped copy. Takes (dict "root" $ "hook" bool). */}}
{{- define "si.chartKafkaSecretName" -}}
{{- include "si.suffixedName" (dict "root" .root "suffix" (ternary "setup-kafka" "kafka" (.hook | default false))) -}}
{{- end -}}

{{- define "si.kafkaSaslSecretName" -}}
{{- .root.Values.kafka.existingSecret | default (include "si.chartKafkaSecretName" .) -}}
{{- end -}}

{{- define "si.kafkaCaSecretName" -}}
{{- .root.Values.kafka.tls.existingSecret | default (include "si.chartKafkaSecretName" .) -}}
{{- end -}}

{{- define "si.registrySecretName" -}}
{{- .root.Values.schemaRegistry.auth.existingSecret | default (include "si.suffixedName" (dict "root" .root "suffix" (ternary "setup-schema-registry" "schema-registry" (.hook | default false)))) -}}
{{- end -}}

{{/* Does the pod mount a Kafka CA file? */}}
{{- define "si.kafkaCaMounted" -}}
{{- $tls := .Values.kafka.tls -}}
{{- if and $tls.enabled (or $tls.caCert $tls.existingSecret) }}true{{ end -}}
{{- end -}}

{{/* Data (JSON) of the chart-created Kafka Secret: SASL credentials and/or CA. Empty object when none. */}}
{{- define "si.kafkaSecretData" -}}
{{- $k := .Values.kafka -}}
{{- $data := dict -}}
{{- if and $k.sasl.enabled (not $k.existingSecret) -}}
{{- if not (and $k.sasl.username $k.sasl.password) -}}
{{- fail "kafka.sasl.enabled needs kafka.sasl.username and kafka.sasl.password, or kafka.existingSecret" -}}
{{- end -}}
{{- $_ := set $data $k.sasl.usernameKey (b64enc $k.sasl.username) -}}
{{- $_ := set $data $k.sasl.passwordKey (b64enc $k.sasl.password) -}}
{{- end -}}
{{- if and $k.tls.enabled $k.tls.caCert (not $k.tls.existingSecret) -}}
{{- $_ := set $data $k.tls.caKey (b64enc $k.tls.caCert) -}}
{{- end -}}
{{- toJson $data -}}
{{- end -}}

{{- define "si.registrySecretData" -}}
{{- $a := .Values.schemaRegistry.auth -}}
{{- $data := dict -}}
{{- if and $a.enabled (not $a.existingSecret) -}}
{{- if not (and $a.username $a.password) -}}
{{- fail "schemaRegistry.auth.enabled needs schemaRegistry.auth.username and .password, or schemaRegistry.auth.existingSecret" -}}
{{- end -}}
{{- $_ := set $data $a.usernameKey (b64enc $a.username) -}}
{{- $_ := set $data $a.passwordKey (b64enc $a.password) -}}
{{- end -}}
{{- toJson $data -}}
{{- end -}}

{{/* Names of the Twilio variables any enabled stage takes (JSON list). */}}
{{- define "si.twilioVarsInUse" -}}
{{- $vars := list -}}
{{- range $name, $stage := .Values.stages -}}
{{- if $stage.enabled -}}
{{- range $var, $_ := ($stage.twilioEnv | default dict) -}}
{{- $vars = append $vars $var -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $vars | uniq | sortAlpha | toJson -}}
{{- end -}}

{{- define "si.twilioSecretData" -}}
{{- $t := .Values.twilio -}}
{{- $values := dict "TWILIO_ACCOUNT_SID" $t.accountSid "TWILIO_AUTH_TOKEN" $t.authToken "TWILIO_AUTH_TOKEN_SECONDARY" $t.authTokenSecondary "TWILIO_API_KEY_SID" $t.apiKeySid "TWILIO_API_KEY_SECRET" $t.apiKeySecret "TWILIO_WEBHOOK_SHARED_SECRET" $t.webhookSharedSecret -}}
{{- $data := dict -}}
{{- range $var, $value := $values -}}
{{- if $value -}}
{{- $_ := set $data (get $t.secretKeys $var) (b64enc $value) -}}
{{- end -}}
{{- end -}}
{{- toJson $data -}}
{{- end -}}

{{/*
Environment.
*/}}

{{/* A value of `config` as an env string: integral floats without exponent. */}}
{{- define "si.envString" -}}
{{- if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{ printf "%.0f" . }}{{- else -}}{{ . }}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
The plain variables of a stage: `config` overlaid with the stage's `config`,
"" or null unsetting. Returns JSON {NAME: "value"}. Takes a stage context.
*/}}
{{- define "si.stageConfig" -}}
{{- $out := dict -}}
{{- range $source := list .root.Values.config (.stage.config | default dict) -}}
{{- range $k, $v := $source -}}
{{- if or (kindIs "invalid" $v) (eq (toString $v) "") -}}
{{- $_ := unset $out $k -}}
{{- else -}}
{{- $_ := set $out $k (include "si.envString" $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Names that must never be a plain value. */}}
{{- define "si.sensitiveNameRegex" -}}
(TOKEN|SECRET|PASSWORD|PASSWD|PRIVATE_KEY)|^TWILIO_(ACCOUNT_SID|API_KEY_SID)$
{{- end -}}

{{- define "si.secretKeyRef" -}}
{{- $ref := dict "name" .name "key" .key -}}
{{- if .optional }}{{ $_ := set $ref "optional" true }}{{ end -}}
{{- toJson (dict "name" .var "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}

{{/*
The env list of a stage or of the setup Job. Takes a stage context plus
"hook" (true for the setup Job).
*/}}
{{- define "si.env" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
{{- $hook := .hook | default false -}}
{{- $ctx := dict "root" $root "hook" $hook -}}
{{- $env := dict -}}
{{- /* 1. chart-managed */ -}}
{{- $_ := set $env "POD_NAME" (dict "name" "POD_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name"))) -}}
{{- $k := $root.Values.kafka -}}
{{- $proto := "" -}}
{{- if and $k.sasl.enabled $k.tls.enabled }}{{ $proto = "SASL_SSL" }}{{ else if $k.sasl.enabled }}{{ $proto = "SASL_PLAINTEXT" }}{{ else if $k.tls.enabled }}{{ $proto = "SSL" }}{{ end -}}
{{- if $proto -}}
{{- $_ := set $env "KAFKA_SECURITY_PROTOCOL" (dict "name" "KAFKA_SECURITY_PROTOCOL" "value" $proto) -}}
{{- end -}}
{{- if $k.sasl.enabled -}}
{{- $_ := set $env "KAFKA_SASL_MECHANISMS" (dict "name" "KAFKA_SASL_MECHANISMS" "value" $k.sasl.mechanism) -}}
{{- $sasl := include "si.kafkaSaslSecretName" $ctx -}}
{{- $_ := set $env "KAFKA_SASL_USERNAME" (include "si.secretKeyRef" (dict "var" "KAFKA_SASL_USERNAME" "name" $sasl "key" $k.sasl.usernameKey) | fromJson) -}}
{{- $_ := set $env "KAFKA_SASL_PASSWORD" (include "si.secretKeyRef" (dict "var" "KAFKA_SASL_PASSWORD" "name" $sasl "key" $k.sasl.passwordKey) | fromJson) -}}
{{- end -}}
{{- if include "si.kafkaCaMounted" $root -}}
{{- $_ := set $env "KAFKA_SSL_CA_LOCATION" (dict "name" "KAFKA_SSL_CA_LOCATION" "value" (printf "%s/ca.crt" (trimSuffix "/" $k.tls.mountPath))) -}}
{{- end -}}
{{- $reg := $root.Values.schemaRegistry.auth -}}
{{- if $reg.enabled -}}
{{- $regSecret := include "si.registrySecretName" $ctx -}}
{{- $_ := set $env "SCHEMA_REGISTRY_USERNAME" (include "si.secretKeyRef" (dict "var" "SCHEMA_REGISTRY_USERNAME" "name" $regSecret "key" $reg.usernameKey) | fromJson) -}}
{{- $_ := set $env "SCHEMA_REGISTRY_PASSWORD" (include "si.secretKeyRef" (dict "var" "SCHEMA_REGISTRY_PASSWORD" "name" $regSecret "key" $reg.passwordKey) | fromJson) -}}
{{- end -}}
{{- if include "si.twilioCredentialsMounted" . -}}
{{- $_ := set $env "TWILIO_CREDENTIALS_DIR" (dict "name" "TWILIO_CREDENTIALS_DIR" "value" $stage.twilioCredentialsMount.mountPath) -}}
{{- end -}}
{{- range $var, $mode := ($stage.twilioEnv | default dict) -}}
{{- $key := get $root.Values.twilio.secretKeys $var -}}
{{- if not $key -}}
{{- fail (printf "stages.%s.twilioEnv.%s: no key for it in twilio.secretKeys" $.name $var) -}}
{{- end -}}
{{- $_ := set $env $var (include "si.secretKeyRef" (dict "var" $var "name" (include "si.twilioSecretName" $root) "key" $key "optional" (eq $mode "optional")) | fromJson) -}}
{{- end -}}
{{- /* 2. plain config: shared, then the stage's */ -}}
{{- $cfg := include "si.stageConfig" . | fromJson -}}
{{- if and (eq .name "egress") (not (hasKey $cfg "STATUS_CALLBACK_BASE_URL")) -}}
{{- $public := get (include "si.stageConfig" (dict "root" $root "stage" $root.Values.stages.ingress) | fromJson) "PUBLIC_BASE_URL" -}}
{{- if $public }}{{ $_ := set $cfg "STATUS_CALLBACK_BASE_URL" $public }}{{ end -}}
{{- end -}}
{{- if and (eq .name "egress") (not (hasKey $cfg "MEDIA_PUBLIC_BASE_URL")) (hasKey ($stage.secretEnv | default dict) "MEDIA_URL_SECRET") -}}
{{- $public := get (include "si.stageConfig" (dict "root" $root "stage" $root.Values.stages.ingress) | fromJson) "PUBLIC_BASE_URL" -}}
{{- if $public }}{{ $_ := set $cfg "MEDIA_PUBLIC_BASE_URL" $public }}{{ end -}}
{{- end -}}
{{- if and (eq .name "voice-link") (not (hasKey $cfg "PUBLIC_BASE_URL")) -}}
{{- $public := get (include "si.stageConfig" (dict "root" $root "stage" $root.Values.stages.ingress) | fromJson) "PUBLIC_BASE_URL" -}}
{{- if $public }}{{ $_ := set $cfg "PUBLIC_BASE_URL" $public }}{{ end -}}
{{- end -}}
{{- range $name, $value := $cfg -}}
{{- $_ := set $env $name (dict "name" $name "value" $value) -}}
{{- end -}}
{{- /* 3. variables from Secrets: shared, then the stage's */ -}}
{{- range $source := list $root.Values.secretEnv ($stage.secretEnv | default dict) -}}
{{- range $name, $ref := $source -}}
{{- $_ := set $env $name (include "si.secretKeyRef" (dict "var" $name "name" $ref.name "key" $ref.key "optional" $ref.optional) | fromJson) -}}
{{- end -}}
{{- end -}}
{{- /* 4. raw EnvVars replace any of the same name */ -}}
{{- range ($stage.extraEnv | default list) -}}
{{- $_ := unset $env .name -}}
{{- end -}}
{{- range $name := keys $env | sortAlpha }}
- {{ get $env $name | toYaml | indent 2 | trim }}
{{- end }}
{{- with $stage.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Durations (humantime, as the binaries parse them) in seconds.
*/}}
{{- define "si.durationSeconds" -}}
{{- $s := toString . | trim -}}
{{- $units := dict "ns" 0.000000001 "nsec" 0.000000001 "us" 0.000001 "usec" 0.000001 "µs" 0.000001 "ms" 0.001 "msec" 0.001 "s" 1.0 "sec" 1.0 "secs" 1.0 "second" 1.0 "seconds" 1.0 "m" 60.0 "min" 60.0 "mins" 60.0 "minute" 60.0 "minutes" 60.0 "h" 3600.0 "hr" 3600.0 "hrs" 3600.0 "hour" 3600.0 "hours" 3600.0 "d" 86400.0 "day" 86400.0 "days" 86400.0 "w" 604800.0 "week" 604800.0 "weeks" 604800.0 -}}
{{- if not (regexMatch "^([0-9]+ *[a-zµ]+ *)+$" $s) -}}
{{- fail (printf "%q is not a duration like 20s, 1m 30s or 500ms" $s) -}}
{{- end -}}
{{- $total := 0.0 -}}
{{- range $part := regexFindAll "[0-9]+ *[a-zµ]+" $s -1 -}}
{{- $unit := regexFind "[a-zµ]+$" $part -}}
{{- if not (hasKey $units $unit) -}}
{{- fail (printf "%q: unknown unit %q" $s $unit) -}}
{{- end -}}
{{- $total = addf $total (mulf (float64 (regexFind "^[0-9]+" $part)) (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/* Whether a stage serves signed media URLs: the media stage with MEDIA_URL_SECRET in its secretEnv. Takes a stage context. */}}
{{- define "si.servesMedia" -}}
{{- if and (eq .name "media") (hasKey (.stage.secretEnv | default dict) "MEDIA_URL_SECRET") }}true{{ end -}}
{{- end -}}

{{/* Port of a host:port listen address. */}}
{{- define "si.addrPort" -}}
{{- if not (regexMatch ":[0-9]{1,5}$" (toString .)) -}}
{{- fail (printf "%q is not a host:port address" (toString .)) -}}
{{- end -}}
{{- regexFind "[0-9]+$" (toString .) -}}
{{- end -}}

{{/* Ports of a stage: JSON {"admin": n, "http": n or absent}. Takes a stage context. */}}
{{- define "si.stagePorts" -}}
{{- $cfg := include "si.stageConfig" . | fromJson -}}
{{- $ports := dict "admin" (include "si.addrPort" (get $cfg "ADMIN_ADDR" | default "0.0.0.0:9090") | int) -}}
{{- if or (eq .name "ingress") (hasKey $cfg "LISTEN_ADDR") -}}
{{- $_ := set $ports "http" (include "si.addrPort" (get $cfg "LISTEN_ADDR" | default "0.0.0.0:8080") | int) -}}
{{- else if include "si.servesMedia" . -}}
{{- /* The media stage's public listener (signed media URLs Twilio fetches). */ -}}
{{- $_ := set $ports "http" (include "si.addrPort" (get $cfg "MEDIA_PUBLIC_ADDR" | default "0.0.0.0:8088") | int) -}}
{{- end -}}
{{- toJson $ports -}}
{{- end -}}

{{/* A stage's list/map value (JSON), the chart-wide one when the stage's is empty. Takes (dict "stage" s "root" $ "key" k). */}}
{{- define "si.stageOrGlobal" -}}
{{- $v := get .stage .key -}}
{{- if empty $v }}{{ $v = get .root.Values .key }}{{ end -}}
{{- if empty $v }}null{{ else }}{{ toJson $v }}{{ end -}}
{{- end -}}

{{/* The chart-wide map overlaid with the stage's (JSON). Takes (dict "stage" s "root" $ "key" k). */}}
{{- define "si.mergedMap" -}}
{{- $out := dict -}}
{{- range $source := list (get .root.Values .key) (get .stage .key) -}}
{{- range $k, $v := ($source | default dict) }}{{ $_ := set $out $k $v }}{{ end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
Checks that no schema can express. Fails rendering with a clear message.
Takes a stage context.
*/}}
{{- define "si.validateStage" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
{{- $name := .name -}}
{{- $hpa := and $stage.autoscaling $stage.autoscaling.enabled -}}
{{- $keda := and $stage.keda $stage.keda.enabled -}}
{{- if and $hpa $keda -}}
{{- fail (printf "stages.%s: autoscaling (HPA) and keda are mutually exclusive; enable one" $name) -}}
{{- end -}}
{{- if $keda -}}
{{- if not (and $stage.consumer $stage.consumer.group $stage.consumer.topics) -}}
{{- fail (printf "stages.%s.keda needs stages.%s.consumer.group and .topics (only consuming stages scale on lag)" $name $name) -}}
{{- end -}}
{{- end -}}
{{- $cfg := include "si.stageConfig" . | fromJson -}}
{{- $drain := include "si.durationSeconds" (get $cfg "DRAIN_TIMEOUT" | default "20s") | float64 -}}
{{- $grace := $stage.terminationGracePeriodSeconds | default $root.Values.terminationGracePeriodSeconds | float64 -}}
{{- if le $grace $drain -}}
{{- fail (printf "stages.%s: terminationGracePeriodSeconds (%v) must be larger than DRAIN_TIMEOUT (%vs), or Kubernetes kills the stage mid-drain" $name $grace $drain) -}}
{{- end -}}
{{- if hasKey $cfg "KAFKA_SESSION_TIMEOUT_MS" -}}
{{- fail (printf "stages.%s: set SESSION_TIMEOUT (humantime, e.g. 10s) instead of KAFKA_SESSION_TIMEOUT_MS: one knob, checked by the binaries" $name) -}}
{{- end -}}
{{- $session := include "si.durationSeconds" (get $cfg "SESSION_TIMEOUT" | default "10s") | float64 -}}
{{- if or (lt $session 6.0) (gt $session 1800.0) -}}
{{- fail (printf "stages.%s: SESSION_TIMEOUT (%vs) must be within 6s..30min (the broker's group.min/max.session.timeout.ms)" $name $session) -}}
{{- end -}}
{{- include "si.validateEnvSources" (dict "where" (printf "stages.%s" $name) "config" $stage.config "extraEnv" $stage.extraEnv) -}}
{{- $_ := include "si.stagePorts" . -}}
{{- end -}}

{{/* Refuse sensitive variables as plain values. Takes (dict "where" s "config" map "extraEnv" list). */}}
{{- define "si.validateEnvSources" -}}
{{- $re := include "si.sensitiveNameRegex" . -}}
{{- $where := ternary (printf "%s." .where) "" (ne .where "") -}}
{{- range $k, $v := (.config | default dict) -}}
{{- if regexMatch $re $k -}}
{{- fail (printf "%sconfig.%s: credentials never go in plain config; use twilio.*, kafka.*, schemaRegistry.* or secretEnv" $where $k) -}}
{{- end -}}
{{- end -}}
{{- range (.extraEnv | default list) -}}
{{- if and (regexMatch $re .name) (hasKey . "value") -}}
{{- fail (printf "%sextraEnv: %s must come from a Secret (valueFrom.secretKeyRef), not a plain value" $where .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
