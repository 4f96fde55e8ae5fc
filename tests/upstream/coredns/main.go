// CoreDNS of the version kubeadm of the pinned Kubernetes release deploys (its CoreDNSVersion), with the
// plugins a test cluster's DNS uses compiled in and nothing else: the full build links every cloud
// provider's SDK, which only makes the build slow. A plugin registers itself in its package's init, and
// the directive order is CoreDNS's own (core/dnsserver), so this is the upstream server, trimmed.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
