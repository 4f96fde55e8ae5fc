// cnitool-compatible driver for twill's tests, built on Debian's libcni (golang-github-appc-cni-dev).
//
// It behaves like upstream cnitool (environment NETCONFPATH, CNI_PATH, CNI_IFNAME, CNI_ARGS, CAP_ARGS;
// container id "cnitool-" + hex of the first 10 bytes of sha512(absolute netns path)) and adds what tests
// need: the verbs "version" and "validate", a result cache directory (CNI_CACHE_DIR) so every test or
// simulated node has its own, an explicit container id (CNI_CONTAINERID), and CNI errors printed as JSON
// on stdout so tests can check their code.
//
// Usage: cnitool add|check|del <netname> <netns path>
//        cnitool version|validate <netname>
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

const (
	envCNIPath        = "CNI_PATH"
	envNetDir         = "NETCONFPATH"
	envCapabilityArgs = "CAP_ARGS"
	envCNIArgs        = "CNI_ARGS"
	envCNIIfname      = "CNI_IFNAME"
	envCacheDir       = "CNI_CACHE_DIR"
	envContainerID    = "CNI_CONTAINERID"

	defaultNetDir = "/etc/cni/net.d"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s add|check|del <netname> <netns path>\n", filepath.Base(os.Args[0]))
	fmt.Fprintf(os.Stderr, "       %s version|validate <netname>\n", filepath.Base(os.Args[0]))
	os.Exit(2)
}

// parseArgs splits CNI_ARGS like upstream cnitool: "K1=V1;K2=V2".
func parseArgs(args string) ([][2]string, error) {
	var result [][2]string
	for _, pair := range strings.Split(args, ";") {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
		}
		result = append(result, [2]string{kv[0], kv[1]})
	}
	return result, nil
}

// exit prints err (as a CNI error object on stdout when it carries one) and exits non-zero.
func exit(err error) {
	if err == nil {
		os.Exit(0)
	}
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out, _ := json.Marshal(cniErr)
		fmt.Println(string(out))
	}
	fmt.Fprintf(os.Stderr, "%s\n", err)
	os.Exit(1)
}

func printJSON(v interface{}) {
	out, err := json.Marshal(v)
	if err != nil {
		exit(err)
	}
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	verb, netName := os.Args[1], os.Args[2]

	netdir := os.Getenv(envNetDir)
	if netdir == "" {
		netdir = defaultNetDir
	}
	netconf, err := libcni.LoadConfList(netdir, netName)
	if err != nil {
		exit(err)
	}
	cninet := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv(envCNIPath)), os.Getenv(envCacheDir), nil)
	ctx := context.Background()

	switch verb {
	case "version":
		type pluginVersions struct {
			Type              string   `json:"type"`
			SupportedVersions []string `json:"supportedVersions"`
		}
		var all []pluginVersions
		for _, plugin := range netconf.Plugins {
			info, err := cninet.GetVersionInfo(ctx, plugin.Network.Type)
			if err != nil {
				exit(fmt.Errorf("plugin %s: %w", plugin.Network.Type, err))
			}
			all = append(all, pluginVersions{plugin.Network.Type, info.SupportedVersions()})
		}
		printJSON(all)
		exit(nil)
	case "validate":
		caps, err := cninet.ValidateNetworkList(ctx, netconf)
		if err != nil {
			exit(err)
		}
		if caps == nil {
			caps = []string{}
		}
		printJSON(map[string]interface{}{"capabilities": caps})
		exit(nil)
	case "add", "check", "del":
	default:
		usage()
	}

	if len(os.Args) < 4 {
		usage()
	}
	var capabilityArgs map[string]interface{}
	if value := os.Getenv(envCapabilityArgs); value != "" {
		if err := json.Unmarshal([]byte(value), &capabilityArgs); err != nil {
			exit(fmt.Errorf("parse %s: %w", envCapabilityArgs, err))
		}
	}
	var cniArgs [][2]string
	if value := os.Getenv(envCNIArgs); value != "" {
		if cniArgs, err = parseArgs(value); err != nil {
			exit(err)
		}
	}
	ifName, ok := os.LookupEnv(envCNIIfname)
	if !ok {
		ifName = "eth0"
	}
	netns, err := filepath.Abs(os.Args[3])
	if err != nil {
		exit(err)
	}
	containerID := os.Getenv(envContainerID)
	if containerID == "" {
		sum := sha512.Sum512([]byte(netns))
		containerID = fmt.Sprintf("cnitool-%x", sum[:10])
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         ifName,
		Args:           cniArgs,
		CapabilityArgs: capabilityArgs,
	}

	switch verb {
	case "add":
		result, err := cninet.AddNetworkList(ctx, netconf, rt)
		if result != nil {
			_ = result.Print()
		}
		exit(err)
	case "check":
		exit(cninet.CheckNetworkList(ctx, netconf, rt))
	case "del":
		exit(cninet.DelNetworkList(ctx, netconf, rt))
	}
}
