// Package join is cairn-join: an agent node's discovery of its server, as
// kubeadm does it, without a CA hash in the site file. It reads the server's
// kube-public/cluster-info ConfigMap without credentials (the API server lets
// anonymous requests reach that one path only), and trusts it only if the
// ConfigMap carries a detached JWS of its kubeconfig made with this node's
// join token (the controller manager's bootstrapsigner signs it with every
// bootstrap token). The token itself is never sent until the server is
// verified: it goes only into the bootstrap kubeconfig, whose CA is the one
// just verified, for the kubelet's TLS bootstrapping.
//
//	cairn-join --server IP --token ID.SECRET --dir DIR [--timeout 10s]
//
// Writes DIR/ca.crt and DIR/bootstrap.kubeconfig. Exit 0: written, the CA is
// the one already in DIR (nothing changed); 3: written, the CA is new (a
// first join, or a server that rebooted into a new control plane); 1: the
// server did not answer or its cluster-info does not verify; 2: bad flags.
package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/cluster-bootstrap/token/jws"
)

// Changed is the exit code for "the CA is new".
const Changed = 3

// maxBody caps what is read from the server: a cluster-info is a few KiB.
const maxBody = 1 << 20

var tokenRE = regexp.MustCompile(`^([a-z0-9]{6})\.([a-z0-9]{16})$`)

// Verify checks a cluster-info ConfigMap's data against the token and the
// server it was asked from, and returns the CA bundle it names.
func Verify(data map[string]string, tokenID, tokenSecret, server string) ([]byte, error) {
	kc, ok := data["kubeconfig"]
	if !ok {
		return nil, errors.New("cluster-info has no kubeconfig")
	}
	sig, ok := data["jws-kubeconfig-"+tokenID]
	if !ok {
		return nil, fmt.Errorf("cluster-info is not signed for token %s (the server has no such bootstrap token, or its bootstrapsigner has not signed yet)", tokenID)
	}
	if !jws.DetachedTokenIsValid(sig, kc, tokenID, tokenSecret) {
		return nil, errors.New("cluster-info's signature does not verify with this node's join token: not the server of this site's cluster")
	}
	cfg, err := clientcmd.Load([]byte(kc))
	if err != nil {
		return nil, fmt.Errorf("cluster-info's kubeconfig: %v", err)
	}
	if len(cfg.Clusters) != 1 {
		return nil, fmt.Errorf("cluster-info names %d clusters, not 1", len(cfg.Clusters))
	}
	for _, c := range cfg.Clusters {
		want := "https://" + net.JoinHostPort(server, "6443")
		if c.Server != want {
			return nil, fmt.Errorf("cluster-info names server %q, not %q", c.Server, want)
		}
		if len(c.CertificateAuthorityData) == 0 {
			return nil, errors.New("cluster-info names no CA")
		}
		return c.CertificateAuthorityData, nil
	}
	return nil, errors.New("unreachable")
}

// fetch reads cluster-info without credentials and without trusting the
// server's certificate: what it returns is trusted only once Verify passes.
func fetch(ctx context.Context, server string) (map[string]string, error) {
	client := &http.Client{Transport: &http.Transport{
		// The signature, not the certificate, is the trust here.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec
		Proxy:           nil,
	}}
	url := "https://" + net.JoinHostPort(server, "6443") + "/api/v1/namespaces/kube-public/configmaps/cluster-info"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxBody {
		return nil, errors.New("cluster-info is larger than 1 MiB")
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the server answered %s", resp.Status)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := json.Unmarshal(body, &cm); err != nil {
		return nil, fmt.Errorf("cluster-info: %v", err)
	}
	return cm.Data, nil
}

// BootstrapKubeconfig is the kubelet's --bootstrap-kubeconfig: the verified
// CA, the server, and the join token as the credential.
func BootstrapKubeconfig(server, token string, ca []byte) ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["cairn"] = &clientcmdapi.Cluster{Server: "https://" + net.JoinHostPort(server, "6443"), CertificateAuthorityData: ca}
	cfg.AuthInfos["join"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["cairn"] = &clientcmdapi.Context{Cluster: "cairn", AuthInfo: "join"}
	cfg.CurrentContext = "cairn"
	return clientcmd.Write(*cfg)
}

func writeFile(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}

// Main runs cairn-join with args (without the program name).
func Main(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("cairn-join", flag.ContinueOnError)
	flags.SetOutput(stderr)
	server := flags.String("server", "", "the server node's IPv4 address (required)")
	tokenFile := flags.String("token-file", "", "a file holding the join token ID.SECRET (required; never a flag: /proc shows flags)")
	dir := flags.String("dir", "", "the folder for ca.crt and bootstrap.kubeconfig (required)")
	timeout := flags.Duration("timeout", 10*time.Second, "how long to wait for the server's answer")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "cairn-join: "+format+"\n", a...)
		return 2
	}
	if flags.NArg() != 0 {
		return bad("unexpected argument %q", flags.Arg(0))
	}
	if net.ParseIP(*server) == nil || net.ParseIP(*server).To4() == nil {
		return bad("--server %q is not an IPv4 address", *server)
	}
	if *dir == "" || *tokenFile == "" {
		return bad("--dir and --token-file are required")
	}
	raw, err := os.ReadFile(*tokenFile)
	if err != nil {
		return bad("%v", err)
	}
	token := strings.TrimSpace(string(raw))
	m := tokenRE.FindStringSubmatch(token)
	if m == nil {
		return bad("the join token in %s is not ID.SECRET ([a-z0-9]{6}.[a-z0-9]{16})", *tokenFile)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	data, err := fetch(ctx, *server)
	if err != nil {
		fmt.Fprintf(stderr, "cairn-join: cluster-info from %s: %v\n", *server, err)
		return 1
	}
	ca, err := Verify(data, m[1], m[2], *server)
	if err != nil {
		fmt.Fprintf(stderr, "cairn-join: %s: %v\n", *server, err)
		return 1
	}
	kc, err := BootstrapKubeconfig(*server, token, ca)
	if err != nil {
		fmt.Fprintf(stderr, "cairn-join: %v\n", err)
		return 1
	}
	old, _ := os.ReadFile(filepath.Join(*dir, "ca.crt"))
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		fmt.Fprintf(stderr, "cairn-join: %v\n", err)
		return 1
	}
	if err := writeFile(*dir, "bootstrap.kubeconfig", kc); err != nil {
		fmt.Fprintf(stderr, "cairn-join: %v\n", err)
		return 1
	}
	if bytes.Equal(old, ca) {
		return 0
	}
	if err := writeFile(*dir, "ca.crt", ca); err != nil {
		fmt.Fprintf(stderr, "cairn-join: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "cairn-join: the server %s's cluster-info verified with the join token; a new CA\n", *server)
	return Changed
}
