//go:build tools

// Pins the Kubernetes programs this module builds; `go mod tidy` keeps them in go.mod. The next programs
// of a node (kube-scheduler, kubelet, kube-proxy) are added here and to the recipe the same way.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
