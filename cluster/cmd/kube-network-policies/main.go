// Command kube-network-policies enforces NetworkPolicies on a cairn node
// with sigs.k8s.io/kube-network-policies' controller (nftables + nfqueue).
// It is upstream's cmd/main.go (v0.8.0) with two changes: the API server is
// reached through a kubeconfig (the node runs it as a host service with a
// per-boot client certificate from cairn-pki, not as a pod with an
// in-cluster service account), and it never fails open. AdminNetworkPolicy
// (alpha) is left out.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

func main() {
	os.Exit(run())
}

func run() int {
	kubeconfig := flag.String("kubeconfig", "", "the kubeconfig naming the API server and this controller's client certificate (required)")
	nodeName := flag.String("hostname-override", "", "the name of the Node whose pods are enforced (required)")
	queueID := flag.Int("nfqueue-id", 100, "the nfqueue the controller judges packets on")
	metrics := flag.String("metrics-bind-address", "127.0.0.1:9080", "the address of the metrics server")
	// Kernels before 6.12 race on DNS conntrack entries (upstream's default).
	bug1766 := flag.Bool("netfilter-bug-1766-fix", true, "process DNS packets on PREROUTING (https://bugzilla.netfilter.org/show_bug.cgi?id=1766)")
	c := logsapi.NewLoggingConfiguration()
	logsapi.AddGoFlags(c, flag.CommandLine)
	flag.Parse()
	logs.InitLogs()
	if err := logsapi.ValidateAndApply(c, nil); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		return 1
	}
	if *kubeconfig == "" || *nodeName == "" {
		fmt.Fprintln(os.Stderr, "kube-network-policies: --kubeconfig and --hostname-override are required")
		return 2
	}
	if _, _, err := net.SplitHostPort(*metrics); err != nil {
		fmt.Fprintf(os.Stderr, "kube-network-policies: --metrics-bind-address %q: %v\n", *metrics, err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer cancel()

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kube-network-policies: %v\n", err)
		return 1
	}
	config.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	config.ContentType = "application/vnd.kubernetes.protobuf"
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kube-network-policies: %v\n", err)
		return 1
	}
	informersFactory := informers.NewSharedInformerFactory(clientset, 0)

	http.Handle("/metrics", promhttp.Handler())
	go func() {
		utilruntime.HandleError(http.ListenAndServe(*metrics, nil))
	}()

	controller, err := networkpolicy.NewController(
		clientset,
		informersFactory.Networking().V1().NetworkPolicies(),
		informersFactory.Core().V1().Namespaces(),
		informersFactory.Core().V1().Pods(),
		nil, nil, nil, nil,
		networkpolicy.Config{
			FailOpen:            false,
			QueueID:             *queueID,
			NodeName:            *nodeName,
			NetfilterBug1766Fix: *bug1766,
			// NRI stays on (containerd's conf has it): v0.8.0 looks an
			// address the API server does not know up in the NRI plugin
			// without a nil check, so without one the first packet from a
			// non-pod address (a NodePort client) crashes the controller.
			NRIdisabled: false,
		},
	)
	if err != nil {
		klog.ErrorS(err, "cannot start the network policy controller")
		return 1
	}
	// Unlike upstream, a controller that stops (its nfqueue could not be
	// opened, say) ends the process: it removed its rules on the way out,
	// and a running process without them would look like enforcement.
	stopped := make(chan error, 1)
	go func() { stopped <- controller.Run(ctx) }()
	informersFactory.Start(ctx.Done())
	select {
	case err := <-stopped:
		klog.ErrorS(err, "the network policy controller stopped")
		return 1
	case <-ctx.Done():
	}
	// Upstream's grace period: the controller removes its rules.
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
	}
	return 0
}
