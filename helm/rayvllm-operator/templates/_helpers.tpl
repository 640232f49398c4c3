{{/* The chart name, overridable. */}}
{{- define "rayvllm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the namespaced objects (Deployment, ServiceAccount): "<release>-operator", or the release name
alone when it already says "operator" (release "rayvllm" -> "rayvllm-operator").
*/}}
{{- define "rayvllm-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains "operator" .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Name of the cluster-scoped objects (ClusterRoles, ClusterRoleBindings). It carries the release name and
its namespace: Helm release names are unique per namespace only, and cluster-scoped names are global, so
two releases (also of the same name in different namespaces) never fight over one ClusterRole.
*/}}
{{- define "rayvllm-operator.clusterName" -}}
{{- printf "%s-%s" (include "rayvllm-operator.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "rayvllm-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rayvllm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rayvllm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rayvllm-operator.labels" -}}
helm.sh/chart: {{ include "rayvllm-operator.chart" . }}
{{ include "rayvllm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: rayvllm
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "rayvllm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rayvllm-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rayvllm-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The watched namespaces, validated: namespaces mode needs at least one. */}}
{{- define "rayvllm-operator.watchNamespaces" -}}
{{- if eq .Values.watch.mode "namespaces" }}
{{- if not .Values.watch.namespaces }}
{{- fail "watch.namespaces must list at least one namespace when watch.mode is namespaces" }}
{{- end }}
{{- toJson .Values.watch.namespaces }}
{{- else }}
{{- toJson list }}
{{- end }}
{{- end }}

{{/*
What the operator does in the namespaces it watches. Every verb is used; README.md says by what.
No wildcards, no secrets list/watch (the operator reads the one Secret a VLLMCluster names).
*/}}
{{- define "rayvllm-operator.namespacedRules" -}}
- apiGroups: ["rayvllm.io"]
  resources: ["vllmclusters"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["rayvllm.io"]
  resources: ["vllmclusters/status"]
  verbs: ["get", "patch", "update"]
# Children carry an ownerReference with blockOwnerDeletion: clusters that enable the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) demand this to set it.
- apiGroups: ["rayvllm.io"]
  resources: ["vllmclusters/finalizers"]
  verbs: ["update"]
- apiGroups: ["ray.io"]
  resources: ["rayclusters"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* What kopf needs cluster-wide in every mode: discover CRDs and follow namespaces. */}}
{{- define "rayvllm-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
