// Command cairn-kube-store writes, on the build host, the containerd root a
// runtime = "kubernetes" image boots with (see cluster/internal/kubestore):
//
//	cairn-kube-store SPEC.json OUT_DIR
//
// Bad arguments or a bad spec exit 2; a failure to write exits 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"cairn.dev/cluster/internal/kubestore"
	"github.com/containerd/log"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: cairn-kube-store SPEC.json OUT_DIR")
		return 2
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "cairn-kube-store: %v\n", err)
		return 2
	}
	// containerd's stores warn about this host (no fsverity here), which
	// says nothing about the image.
	_ = log.SetLevel("error")
	var spec kubestore.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		fmt.Fprintf(os.Stderr, "cairn-kube-store: %s: %v\n", args[0], err)
		return 2
	}
	if err := kubestore.Write(context.Background(), spec, args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "cairn-kube-store: %v\n", err)
		return 1
	}
	return 0
}
