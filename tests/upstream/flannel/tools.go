//go:build tools

// Pins the upstream programs this module builds; `go mod tidy` keeps them in go.mod.
package tools

import (
	_ "github.com/flannel-io/flannel"
)
