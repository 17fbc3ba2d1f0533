// Package ready is cairn-cluster-ready: it waits until the node is Ready and
// every named Deployment is Available, so that the guest prints
// `cairn: ready` only for a cluster that serves its workloads.
//
//	cairn-cluster-ready --kubeconfig F [--timeout 300s] [--node N] [--deployments ns/name,...]
//
// Success prints nothing and exits 0. On timeout it prints one line,
// `cairn: FATAL cluster: <what did not come up>`, and exits 1. Bad flags exit 2.
package ready

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// pollInterval is how long to wait between two looks at the cluster.
const pollInterval = 2 * time.Second

// Deployment names one Deployment to wait for.
type Deployment struct{ Namespace, Name string }

func (d Deployment) String() string { return d.Namespace + "/" + d.Name }

// ParseDeployments reads "ns/name,ns/name"; an empty string is no Deployment.
func ParseDeployments(list string) ([]Deployment, error) {
	var out []Deployment
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	for _, item := range strings.Split(list, ",") {
		ns, name, ok := strings.Cut(strings.TrimSpace(item), "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("--deployments: %q is not NAMESPACE/NAME", item)
		}
		out = append(out, Deployment{ns, name})
	}
	return out, nil
}

// Main runs the command with args (without the program name).
func Main(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("cairn-cluster-ready", flag.ContinueOnError)
	flags.SetOutput(stderr)
	kubeconfig := flags.String("kubeconfig", "", "kubeconfig of a user that may read nodes and deployments (required)")
	timeout := flags.Duration("timeout", 300*time.Second, "how long to wait for everything to come up")
	node := flags.String("node", "", "the node that must be Ready (default: every node, and at least one)")
	deploymentList := flags.String("deployments", "", "comma-separated NAMESPACE/NAME of Deployments that must be Available")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	deployments, err := ParseDeployments(*deploymentList)
	if err == nil && *kubeconfig == "" {
		err = errors.New("--kubeconfig is required")
	}
	if err == nil && flags.NArg() != 0 {
		err = fmt.Errorf("unexpected argument %q", flags.Arg(0))
	}
	if err == nil && *timeout <= 0 {
		err = errors.New("--timeout must be positive")
	}
	if err != nil {
		fmt.Fprintf(stderr, "cairn-cluster-ready: %v\n", err)
		return 2
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(stderr, "cairn-cluster-ready: %v\n", err)
		return 2
	}
	config.Timeout = 10 * time.Second
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintf(stderr, "cairn-cluster-ready: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if pending := Wait(ctx, client, *node, deployments, pollInterval); pending != "" {
		fmt.Fprintf(stdout, "cairn: FATAL cluster: %s\n", oneLine(pending))
		return 1
	}
	return 0
}

// Wait polls until Pending reports nothing or ctx ends; it returns what was
// still pending at the end ("" when everything came up).
func Wait(ctx context.Context, client kubernetes.Interface, node string, deployments []Deployment, interval time.Duration) string {
	for {
		pending := Pending(ctx, client, node, deployments)
		if pending == "" {
			return ""
		}
		select {
		case <-ctx.Done():
			return pending
		case <-time.After(interval):
		}
	}
}

// Pending says what has not come up yet, or "" when the node is Ready and
// every Deployment is Available with all its replicas updated and available.
func Pending(ctx context.Context, client kubernetes.Interface, node string, deployments []Deployment) string {
	var nodes []corev1.Node
	if node != "" {
		n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return fmt.Sprintf("node %s not registered (%v)", node, err)
		}
		nodes = []corev1.Node{*n}
	} else {
		list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Sprintf("API server not answering (%v)", err)
		}
		if len(list.Items) == 0 {
			return "no node registered"
		}
		nodes = list.Items
	}
	for i := range nodes {
		if why := nodeNotReady(&nodes[i]); why != "" {
			return fmt.Sprintf("node %s not Ready (%s)", nodes[i].Name, why)
		}
	}
	var missing []string
	for _, d := range deployments {
		dep, err := client.AppsV1().Deployments(d.Namespace).Get(ctx, d.Name, metav1.GetOptions{})
		if err != nil {
			missing = append(missing, fmt.Sprintf("deployment %s not found (%v)", d, err))
			continue
		}
		if why := deploymentNotAvailable(dep); why != "" {
			missing = append(missing, fmt.Sprintf("deployment %s not Available (%s)", d, why))
		}
	}
	return strings.Join(missing, "; ")
}

func nodeNotReady(n *corev1.Node) string {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status == corev1.ConditionTrue {
				return ""
			}
			return strings.TrimSpace(c.Reason + ": " + c.Message)
		}
	}
	return "no Ready condition yet"
}

func deploymentNotAvailable(d *appsv1.Deployment) string {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	counts := fmt.Sprintf("%d/%d available", s.AvailableReplicas, want)
	if s.ObservedGeneration < d.Generation {
		return counts + ", spec not yet observed"
	}
	for _, c := range s.Conditions {
		if c.Type == appsv1.DeploymentAvailable && c.Status != corev1.ConditionTrue {
			return counts + ": " + strings.TrimSpace(c.Reason+" "+c.Message)
		}
	}
	if s.AvailableReplicas < want || s.UpdatedReplicas < want {
		return counts
	}
	return ""
}

// oneLine keeps the FATAL message on one console line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
