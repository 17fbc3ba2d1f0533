// Command kube is one binary for the Kubernetes components of a
// runtime = "kubernetes" image: the shared packages are compiled and
// stored once. It runs the component named by the base name of argv[0]
// (a symlink kube-apiserver -> kube), or by its first argument.
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
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// components maps each name to the constructor upstream's cmd/<name>/main.go
// calls; a command is built only when it runs, as upstream's mains do.
var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
	"kube-proxy":              proxy.NewProxyCommand,
}

func main() {
	if newCommand, ok := components[filepath.Base(os.Args[0])]; ok {
		os.Exit(cli.Run(newCommand()))
	}
	if len(os.Args) > 1 {
		if newCommand, ok := components[os.Args[1]]; ok {
			command := newCommand()
			command.SetArgs(os.Args[2:])
			os.Exit(cli.Run(command))
		}
	}
	names := make([]string, 0, len(components))
	for name := range components {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: %s COMPONENT [FLAGS] (or run it as COMPONENT)\ncomponents: %v\n",
		filepath.Base(os.Args[0]), names)
	os.Exit(2)
}
