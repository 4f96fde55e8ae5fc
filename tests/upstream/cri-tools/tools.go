//go:build tools

// Pins the upstream programs this module builds; `go mod tidy` keeps them in go.mod. critest is the test
// binary of cmd/critest (built with `go test -c`, as cri-tools does), so the packages it links are named
// here too, which keeps their sums in go.sum.
package tools

import (
	_ "github.com/onsi/ginkgo/v2"
	_ "github.com/onsi/gomega"
	_ "sigs.k8s.io/cri-tools/cmd/critest"
	_ "sigs.k8s.io/cri-tools/pkg/benchmark"
	_ "sigs.k8s.io/cri-tools/pkg/framework"
	_ "sigs.k8s.io/cri-tools/pkg/validate"
)
