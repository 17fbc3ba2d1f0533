// Command cairn-pki makes a single-node cluster's PKI at boot (see
// cluster/internal/pki and cluster/README.md for the files it writes).
//
//	cairn-pki --dir DIR --node-name N --node-ip IP --service-ip 10.96.0.1
//	          [--cluster-domain cluster.local] [--server https://127.0.0.1:6443]
//	          [--client NAME=USER[,GROUP...]]...
//
// Bad flags exit 2; a failure to write (a file already there) exits 1.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"cairn.dev/cluster/internal/pki"
)

type clientFlags []pki.Client

func (c *clientFlags) String() string { return fmt.Sprint(*c) }
func (c *clientFlags) Set(s string) error {
	client, err := pki.ParseClient(s)
	if err == nil {
		*c = append(*c, client)
	}
	return err
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	flags := flag.NewFlagSet("cairn-pki", flag.ContinueOnError)
	dir := flags.String("dir", "", "directory to write the PKI into (made with mode 0700; required)")
	nodeName := flags.String("node-name", "", "the node's name (required)")
	nodeIP := flags.String("node-ip", "", "the node's IP address (required)")
	serviceIP := flags.String("service-ip", "", "the kubernetes Service's cluster IP, e.g. 10.96.0.1 (required)")
	domain := flags.String("cluster-domain", "cluster.local", "the cluster's DNS domain")
	server := flags.String("server", "https://127.0.0.1:6443", "the API server URL written into the kubeconfigs")
	var clients clientFlags
	flags.Var(&clients, "client", "one more kubeconfig NAME.kubeconfig for USER in GROUPs: NAME=USER[,GROUP...] (repeatable)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "cairn-pki: "+format+"\n", a...)
		return 2
	}
	if flags.NArg() != 0 {
		return fail("unexpected argument %q", flags.Arg(0))
	}
	for name, value := range map[string]string{"dir": *dir, "node-name": *nodeName, "node-ip": *nodeIP, "service-ip": *serviceIP} {
		if value == "" {
			return fail("--%s is required", name)
		}
	}
	node, service := net.ParseIP(*nodeIP), net.ParseIP(*serviceIP)
	if node == nil {
		return fail("--node-ip %q is not an IP address", *nodeIP)
	}
	if service == nil {
		return fail("--service-ip %q is not an IP address", *serviceIP)
	}
	if !strings.HasPrefix(*server, "https://") {
		return fail("--server %q: want an https:// URL", *server)
	}
	err := pki.Make(pki.Options{
		Dir: *dir, NodeName: *nodeName, NodeIP: node, ServiceIP: service,
		ClusterDomain: *domain, Server: *server, Clients: clients, Now: time.Now(),
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cairn-pki: %v\n", err)
		return 1
	}
	return 0
}
