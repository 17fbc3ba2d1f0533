// Command kube is one binary for the Go components of a
// runtime = "kubernetes" node: the shared packages (client-go, grpc, etcd's
// client, protobuf) are compiled and stored once. It runs the component named
// by the base name of argv[0] (a symlink kube-apiserver -> kube), or by its
// first argument (kube kubectl get nodes).
//
// Not in here, on purpose: containerd-shim-runc-v2 (started once per pod, so
// it stays a small binary of its own), runc (cgo), the CNI plugins (exec'd per
// pod network operation), kube-network-policies and cairn-pki (see build.sh).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // CronJob time zones (kube-apiserver, kube-controller-manager)

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins" // containerd's plugins, CRI among them
	containerd "github.com/containerd/containerd/v2/cmd/containerd/command"

	"go.etcd.io/etcd/server/v3/etcdmain"

	"cairn.dev/cluster/internal/join"
	"cairn.dev/cluster/internal/ready"
)

// components maps each name to what upstream's main for that name does; each
// receives os.Args rewritten so that os.Args[0] is the component's name and
// the rest are its own arguments, whichever way kube was called.
var components = map[string]func() int{
	"kube-apiserver":          cobraMain(apiserver.NewAPIServerCommand),
	"kube-controller-manager": cobraMain(controllermanager.NewControllerManagerCommand),
	"kube-scheduler":          cobraMain(func() *cobra.Command { return scheduler.NewSchedulerCommand() }),
	"kubelet":                 cobraMain(func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) }),
	"kube-proxy":              cobraMain(proxy.NewProxyCommand),
	"kubectl":                 kubectlMain,
	"etcd":                    etcdMain,
	"containerd":              containerdMain,
	"coredns":                 corednsMain,
	"cairn-cluster-ready":     func() int { return ready.Main(os.Args[1:], os.Stdout, os.Stderr) },
	"cairn-join":              func() int { return join.Main(os.Args[1:], os.Stdout, os.Stderr) },
}

// cobraMain is upstream's cmd/<name>/main.go for the control plane and node
// components.
func cobraMain(newCommand func() *cobra.Command) func() int {
	return func() int {
		command := newCommand()
		command.SetArgs(os.Args[1:])
		return cli.Run(command)
	}
}

// kubectlMain is k8s.io/kubernetes/cmd/kubectl/kubectl.go (without the cloud
// auth plugins: a node's kubeconfigs hold client certificates).
func kubectlMain() int {
	logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := kubectl.NewDefaultKubectlCommand()
	command.SetArgs(os.Args[1:])
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err) // prints the error and exits non-zero
	}
	return 0
}

// etcdMain is go.etcd.io/etcd/server/v3/main.go.
func etcdMain() int {
	etcdmain.Main(os.Args)
	return 0
}

// containerdMain is github.com/containerd/containerd/v2/cmd/containerd/main.go.
func containerdMain() int {
	if err := containerd.App().Run(context.Background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "containerd:", err)
		return 1
	}
	return 0
}

func main() {
	name := filepath.Base(os.Args[0])
	run, ok := components[name]
	if !ok && len(os.Args) > 1 {
		name = os.Args[1]
		if run, ok = components[name]; ok {
			os.Args = append([]string{name}, os.Args[2:]...)
		}
	}
	if !ok {
		names := make([]string, 0, len(components))
		for name := range components {
			names = append(names, name)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: %s COMPONENT [FLAGS] (or run it as COMPONENT)\ncomponents: %v\n",
			filepath.Base(os.Args[0]), names)
		os.Exit(2)
	}
	if name != "coredns" {
		dropCorednsGoFlags()
	}
	os.Exit(run())
}
