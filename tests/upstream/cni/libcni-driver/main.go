// A runtime's use of upstream libcni (the version go.mod pins) for twill's tests, beside the real cnitool.
//
// cnitool itself cannot name a result cache directory, a container id or the attachments a GC must keep
// (its `gc` always passes none, so every cached attachment of the network is deleted and the plugins get
// no valid-attachment list). This driver takes the same environment as cnitool (NETCONFPATH, CNI_PATH,
// CNI_IFNAME, CNI_ARGS, CAP_ARGS) plus CNI_CACHE_DIR, CNI_CONTAINERID and, for gc, CNI_VALID_ATTACHMENTS
// (a JSON array of {"containerID", "ifname"}; unset means libcni gets no GC arguments). CNI errors are
// printed as JSON on stdout so tests can check their code.
//
// Usage:
//
//	libcni-driver add|check|del <netname> <netns path>
//	libcni-driver gc|status|version|validate <netname>
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

func usage() {
	name := filepath.Base(os.Args[0])
	fmt.Fprintf(os.Stderr, "usage: %s add|check|del <netname> <netns path>\n", name)
	fmt.Fprintf(os.Stderr, "       %s gc|status|version|validate <netname>\n", name)
	os.Exit(2)
}

// fail prints err (as a CNI error object on stdout when it carries one) and exits non-zero.
func fail(err error) {
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out, _ := json.Marshal(cniErr)
		fmt.Println(string(out))
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func done(err error) {
	if err != nil {
		fail(err)
	}
	os.Exit(0)
}

func printJSON(v interface{}) {
	out, err := json.Marshal(v)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

// runtimeConf builds the attachment's parameters the way cnitool does, with CNI_CONTAINERID overriding
// the id cnitool derives from the netns path.
func runtimeConf(netnsArg string) (*libcni.RuntimeConf, error) {
	rt := &libcni.RuntimeConf{IfName: "eth0"}
	if v, ok := os.LookupEnv("CNI_IFNAME"); ok && v != "" {
		rt.IfName = v
	}
	if v := os.Getenv("CAP_ARGS"); v != "" {
		if err := json.Unmarshal([]byte(v), &rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("parse CAP_ARGS: %w", err)
		}
	}
	if v := os.Getenv("CNI_ARGS"); v != "" {
		for _, pair := range strings.Split(v, ";") {
			kv := strings.Split(pair, "=")
			if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
				return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
			}
			rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
		}
	}
	netns, err := filepath.Abs(netnsArg)
	if err != nil {
		return nil, err
	}
	rt.NetNS = netns
	rt.ContainerID = os.Getenv("CNI_CONTAINERID")
	if rt.ContainerID == "" {
		sum := sha512.Sum512([]byte(netns))
		rt.ContainerID = fmt.Sprintf("cnitool-%x", sum[:10])
	}
	return rt, nil
}

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	verb, netName := os.Args[1], os.Args[2]
	netdir := os.Getenv("NETCONFPATH")
	if netdir == "" {
		netdir = "/etc/cni/net.d"
	}
	list, err := libcni.LoadNetworkConf(netdir, netName)
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()

	switch verb {
	case "gc":
		var args *libcni.GCArgs
		if v, ok := os.LookupEnv("CNI_VALID_ATTACHMENTS"); ok {
			args = &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}
			if err := json.Unmarshal([]byte(v), &args.ValidAttachments); err != nil {
				fail(fmt.Errorf("parse CNI_VALID_ATTACHMENTS: %w", err))
			}
		}
		done(cni.GCNetworkList(ctx, list, args))
	case "status":
		done(cni.GetStatusNetworkList(ctx, list))
	case "version":
		type pluginVersions struct {
			Type              string   `json:"type"`
			SupportedVersions []string `json:"supportedVersions"`
		}
		all := []pluginVersions{}
		for _, plugin := range list.Plugins {
			info, err := cni.GetVersionInfo(ctx, plugin.Network.Type)
			if err != nil {
				fail(fmt.Errorf("plugin %s: %w", plugin.Network.Type, err))
			}
			all = append(all, pluginVersions{plugin.Network.Type, info.SupportedVersions()})
		}
		printJSON(map[string]interface{}{"cniVersion": list.CNIVersion, "plugins": all})
		done(nil)
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail(err)
		}
		if caps == nil {
			caps = []string{}
		}
		printJSON(map[string]interface{}{"capabilities": caps})
		done(nil)
	case "add", "check", "del":
	default:
		usage()
	}

	if len(os.Args) < 4 {
		usage()
	}
	rt, err := runtimeConf(os.Args[3])
	if err != nil {
		fail(err)
	}
	switch verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if result != nil {
			_ = result.Print()
		}
		done(err)
	case "check":
		done(cni.CheckNetworkList(ctx, list, rt))
	case "del":
		done(cni.DelNetworkList(ctx, list, rt))
	}
}
