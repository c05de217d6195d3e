{{/* Names and labels, as `helm create` makes them. */}}
{{- define "gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gateway.fullname" -}}
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

{{- define "gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gateway.labels" -}}
helm.sh/chart: {{ include "gateway.chart" . }}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: liftoff
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
repository:tag, repository:tag@digest or repository@digest. Without a digest the tag defaults to
the chart's appVersion; with one, the digest alone decides what is pulled.
*/}}
{{- define "gateway.image" -}}
{{- $v := .Values.image }}
{{- if and $v.digest $v.tag }}
{{- printf "%s:%s@%s" $v.repository $v.tag $v.digest }}
{{- else if $v.digest }}
{{- printf "%s@%s" $v.repository $v.digest }}
{{- else }}
{{- printf "%s:%s" $v.repository (default .Chart.AppVersion $v.tag) }}
{{- end }}
{{- end }}

{{/* An HTTP probe on the container's `http` port from one entry of .Values.probes. */}}
{{- define "gateway.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: http
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end }}

{{/* Smallest number of replicas the Deployment can run with. */}}
{{- define "gateway.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas | int }}{{ else }}{{ .Values.replicaCount | int }}{{ end }}
{{- end }}

{{/* Largest number of replicas the Deployment can run with. */}}
{{- define "gateway.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas | int }}{{ else }}{{ .Values.replicaCount | int }}{{ end }}
{{- end }}

{{/* Resources the HPA scales on ("cpu", "memory"). */}}
{{- define "gateway.hpaResources" -}}
{{- $out := list }}
{{- if .Values.autoscaling.enabled }}
{{- if not (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) }}{{ $out = append $out "cpu" }}{{ end }}
{{- if not (kindIs "invalid" .Values.autoscaling.targetMemoryUtilizationPercentage) }}{{ $out = append $out "memory" }}{{ end }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{/*
Abort rendering with `msg`. `helm lint` downgrades `fail` to a log line, so the message is also
raised as a template lookup error, which lint reports as a failure (with the same text).
*/}}
{{- define "gateway.fail" -}}
{{- fail . }}
{{- include (printf "invalid values: %s" .) dict }}
{{- end }}

{{/*
Cross-field rules JSON Schema cannot express. Each failure names the values involved and what
is allowed. Included by the Deployment so every render runs them.
*/}}
{{- define "gateway.validate" -}}
{{- $a := .Values.autoscaling }}
{{- if and $a.enabled (gt ($a.minReplicas | int) ($a.maxReplicas | int)) }}
{{- include "gateway.fail" (printf "autoscaling.minReplicas (%d) must be <= autoscaling.maxReplicas (%d)" ($a.minReplicas | int) ($a.maxReplicas | int)) }}
{{- end }}
{{- if and $a.enabled (kindIs "invalid" $a.targetCPUUtilizationPercentage) (kindIs "invalid" $a.targetMemoryUtilizationPercentage) }}
{{- include "gateway.fail" "autoscaling.enabled is true but neither autoscaling.targetCPUUtilizationPercentage nor autoscaling.targetMemoryUtilizationPercentage is set: the HPA needs at least one metric" }}
{{- end }}
{{- $s := .Values.server }}
{{- $preStop := .Values.lifecycle.preStopSleepSeconds | int }}
{{- $grace := .Values.terminationGracePeriodSeconds | int }}
{{- $graceful := $s.gracefulShutdownSeconds | int }}
{{- /* The gateway's own post-SIGTERM delay (config.server.shutdown_delay_s) also counts. */}}
{{- $delay := dig "server" "shutdown_delay_s" 0 .Values.config | int }}
{{- if le $grace (add $preStop $delay $graceful) }}
{{- if $delay }}
{{- include "gateway.fail" (printf "terminationGracePeriodSeconds (%d) must be greater than lifecycle.preStopSleepSeconds (%d) + config.server.shutdown_delay_s (%d) + server.gracefulShutdownSeconds (%d) = %d, or the kubelet kills in-flight streams" $grace $preStop $delay $graceful (add $preStop $delay $graceful)) }}
{{- else }}
{{- include "gateway.fail" (printf "terminationGracePeriodSeconds (%d) must be greater than lifecycle.preStopSleepSeconds (%d) + server.gracefulShutdownSeconds (%d) = %d, or the kubelet kills in-flight streams" $grace $preStop $graceful (add $preStop $graceful)) }}
{{- end }}
{{- end }}
{{- if le ($s.keepAliveTimeoutSeconds | int) (.Values.loadBalancer.idleTimeoutSeconds | int) }}
{{- include "gateway.fail" (printf "server.keepAliveTimeoutSeconds (%d) must be greater than loadBalancer.idleTimeoutSeconds (%d): the ALB must close idle connections first, or it gets a 502 from a connection the server closed" ($s.keepAliveTimeoutSeconds | int) (.Values.loadBalancer.idleTimeoutSeconds | int)) }}
{{- end }}
{{- if .Values.vpa.enabled }}
{{- range $r := splitList "," (include "gateway.hpaResources" .) }}
{{- if and $r (has $r $.Values.vpa.controlledResources) }}
{{- include "gateway.fail" (printf "vpa.controlledResources includes %s but the HPA scales on %s (autoscaling.target%sUtilizationPercentage): the VPA may only control resources the HPA does not scale on (e.g. vpa.controlledResources=[memory] with a CPU-based HPA)" $r $r (ternary "CPU" "Memory" (eq $r "cpu"))) }}
{{- end }}
{{- end }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- $min := include "gateway.minReplicas" . | int }}
{{- if and $pdb.enabled (gt (include "gateway.maxReplicas" . | int) 1) (ge ($pdb.minAvailable | int) $min) }}
{{- include "gateway.fail" (printf "podDisruptionBudget.minAvailable (%d) must be below the smallest replica count (%d, %s), or no pod can ever be evicted and node drains block; lower it or set podDisruptionBudget.enabled=false" ($pdb.minAvailable | int) $min (ternary "autoscaling.minReplicas" "replicaCount" .Values.autoscaling.enabled)) }}
{{- end }}
{{- if contains "@" (.Values.redis.url | default "") }}
{{- include "gateway.fail" "redis.url must not contain credentials (value withheld): give host, port and db only; the AUTH token comes from secrets.redisAuthTokenArn" }}
{{- end }}
{{- $names := list }}
{{- range $i, $p := .Values.providers }}
{{- if has $p.name $names }}
{{- include "gateway.fail" (printf "providers[%d].name (%s) is used by an earlier provider: names must be unique" $i $p.name) }}
{{- end }}
{{- $names = append $names $p.name }}
{{- end }}
{{- if .Values.providers }}
{{- if hasKey (dig "upstream" dict .Values.config) "providers" }}
{{- include "gateway.fail" "set providers or config.upstream.providers, not both" }}
{{- end }}
{{- if dig "upstream" "url" nil .Values.config }}
{{- include "gateway.fail" "config.upstream.url must be unset when providers is set: each provider has its url" }}
{{- end }}
{{- end }}
{{- range (dig "upstream" "providers" list .Values.config) }}
{{- $names = append $names (get . "name") }}
{{- end }}
{{- range $name, $arn := .Values.secrets.providerApiKeyArns }}
{{- if not (has $name $names) }}
{{- include "gateway.fail" (printf "secrets.providerApiKeyArns.%s names no entry of providers (%s)" $name (join ", " $names | default "none")) }}
{{- end }}
{{- end }}
{{- $configYaml := toYaml .Values.config }}
{{- $secretKey := regexFind "(?im)^\\s*(-\\s+)?[\"']?[a-z0-9_-]*(api_?key|auth_?token|password|passwd|secret|client_?keys|credentials?)[\"']?\\s*:" $configYaml }}
{{- if $secretKey }}
{{- include "gateway.fail" (printf "config must not hold secrets (found key %q): pass credentials as Secrets Manager ARNs under secrets.*" (regexReplaceAll "^[\\s\"'-]*|[\"']?\\s*:$" $secretKey "")) }}
{{- end }}
{{- end }}

{{/* Seconds in a duration such as 1h30m, 5m or 10s (the forms the schema allows). */}}
{{- define "gateway.durationSeconds" -}}
{{- $h := regexFind "[0-9]+h" . | trimSuffix "h" | default "0" | int }}
{{- $m := regexFind "[0-9]+m" . | trimSuffix "m" | default "0" | int }}
{{- $s := regexFind "[0-9]+s" . | trimSuffix "s" | default "0" | int }}
{{- add (mul $h 3600) (mul $m 60) $s }}
{{- end }}

{{/* PromQL label matchers of the gateway's own series: the ServiceMonitor's job and namespace. */}}
{{- define "gateway.promSelector" -}}
job="{{ include "gateway.fullname" . }}",namespace="{{ .Release.Namespace }}"
{{- end }}

{{/*
The gateway config of the ConfigMap: .Values.config, with .Values.providers (camelCase values)
as upstream.providers in the gateway's own keys.
*/}}
{{- define "gateway.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if .Values.providers }}
{{- $providers := list }}
{{- range .Values.providers }}
{{- $entry := dict "name" .name "kind" .kind "url" .url "api_version" .apiVersion "auth" (.auth | default "api_key") "deployments" (.deployments | default dict) }}
{{- with .region }}{{ $_ := set $entry "region" . }}{{ end }}
{{- $providers = append $providers $entry }}
{{- end }}
{{- $upstream := deepCopy (dig "upstream" dict $config) }}
{{- $_ := set $upstream "providers" $providers }}
{{- $_ := set $config "upstream" $upstream }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* LIFTOFF_PROVIDER_<NAME>_API_KEY_SECRET_ARN of a provider name. */}}
{{- define "gateway.providerKeyEnv" -}}
{{- printf "LIFTOFF_PROVIDER_%s_API_KEY_SECRET_ARN" (. | upper | replace "-" "_") }}
{{- end }}
