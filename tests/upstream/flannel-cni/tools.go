//go:build tools

// Pins the upstream program this module builds; `go mod tidy` keeps it in go.mod.
package tools

import (
	_ "github.com/containernetworking/plugins/plugins/meta/flannel"
)
