package pki

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func options(dir string) Options {
	return Options{
		Dir: dir, NodeName: "node1", NodeIP: net.ParseIP("192.168.76.2"), ServiceIP: net.ParseIP("10.96.0.1"),
		ClusterDomain: "cluster.local", Server: "https://127.0.0.1:6443", Now: time.Now(),
		Clients: []Client{{"coredns", "system:coredns", nil}},
	}
}

func readCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		t.Fatal("no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func read(t *testing.T, dir, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestMakeWritesAVerifiablePKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if err := Make(options(dir)); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, read(t, dir, CACert)))

	apiserver := readCert(t, read(t, dir, APIServerCert))
	for _, host := range []string{"kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1", "192.168.76.2", "127.0.0.1", "node1"} {
		if _, err := apiserver.Verify(x509.VerifyOptions{DNSName: host, Roots: roots}); err != nil {
			t.Errorf("apiserver cert for %s: %v", host, err)
		}
	}
	// Control: a name the certificate does not carry is refused.
	if _, err := apiserver.Verify(x509.VerifyOptions{DNSName: "10.96.0.2", Roots: roots}); err == nil {
		t.Error("apiserver cert verified for 10.96.0.2")
	}
	kubelet := readCert(t, read(t, dir, KubeletServingCert))
	if _, err := kubelet.Verify(x509.VerifyOptions{DNSName: "192.168.76.2", Roots: roots}); err != nil {
		t.Errorf("kubelet serving cert: %v", err)
	}
	client := readCert(t, read(t, dir, KubeletClientCert))
	if _, err := client.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("apiserver-kubelet-client cert: %v", err)
	}
	if _, err := client.Verify(x509.VerifyOptions{Roots: roots}); err == nil {
		t.Error("the kubelet client cert verified as a server cert")
	}

	// The kubelet's kubeconfig names system:node:node1 in system:nodes.
	kc := string(read(t, dir, "kubelet.kubeconfig"))
	m := regexp.MustCompile(`client-certificate-data: (\S+)`).FindStringSubmatch(kc)
	if m == nil {
		t.Fatalf("kubelet.kubeconfig has no client certificate:\n%s", kc)
	}
	certPEM, err := base64.StdEncoding.DecodeString(m[1])
	if err != nil {
		t.Fatal(err)
	}
	node := readCert(t, certPEM)
	if node.Subject.CommonName != "system:node:node1" || strings.Join(node.Subject.Organization, ",") != "system:nodes" {
		t.Errorf("kubelet client: %v", node.Subject)
	}
	if !strings.Contains(kc, `server: "https://127.0.0.1:6443"`) {
		t.Errorf("kubelet.kubeconfig server:\n%s", kc)
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", e.Name(), info.Mode().Perm())
		}
		names = append(names, e.Name())
	}
	want := "admin.kubeconfig apiserver-etcd-client.crt apiserver-etcd-client.key apiserver-kubelet-client.crt apiserver-kubelet-client.key apiserver.crt apiserver.key ca.crt ca.key controller-manager.kubeconfig coredns.kubeconfig etcd-ca.crt etcd.crt etcd.key kube-proxy.kubeconfig kubelet.crt kubelet.key kubelet.kubeconfig sa.key sa.pub scheduler.kubeconfig"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("files:\n got %s\nwant %s", got, want)
	}
	if info, err := os.Stat(dir); err != nil || info.Mode().Perm() != 0o700 {
		t.Errorf("directory mode: %v %v", info.Mode(), err)
	}
}

func TestMakeRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, CAKey), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Make(options(dir))
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("Make over an existing ca.key: %v", err)
	}
	if data := read(t, dir, CAKey); string(data) != "old" {
		t.Error("ca.key was overwritten")
	}
	if _, err := os.Stat(filepath.Join(dir, CACert)); err == nil {
		t.Error("a partial PKI was written")
	}
}

func TestParseClient(t *testing.T) {
	c, err := ParseClient("kube-network-policies=system:kube-network-policies,system:netpol,extra")
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "kube-network-policies" || c.User != "system:kube-network-policies" || strings.Join(c.Groups, " ") != "system:netpol extra" {
		t.Errorf("%+v", c)
	}
	for _, bad := range []string{"", "name", "../x=user", "name=", "name=user,", "a:b=user"} {
		if _, err := ParseClient(bad); err == nil {
			t.Errorf("ParseClient(%q) accepted", bad)
		}
	}
}

func TestEtcdHasItsOwnCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if err := Make(options(dir)); err != nil {
		t.Fatal(err)
	}
	etcdRoots := x509.NewCertPool()
	etcdRoots.AddCert(readCert(t, read(t, dir, EtcdCACert)))
	server := readCert(t, read(t, dir, EtcdCert))
	if _, err := server.Verify(x509.VerifyOptions{DNSName: "127.0.0.1", Roots: etcdRoots}); err != nil {
		t.Errorf("etcd serving cert: %v", err)
	}
	clientAuth := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if _, err := readCert(t, read(t, dir, EtcdClientCert)).Verify(x509.VerifyOptions{Roots: etcdRoots, KeyUsages: clientAuth}); err != nil {
		t.Errorf("apiserver-etcd-client cert: %v", err)
	}
	// Control: a client certificate of the cluster CA (any kubeconfig's) is
	// not one etcd trusts.
	if _, err := readCert(t, read(t, dir, KubeletClientCert)).Verify(x509.VerifyOptions{Roots: etcdRoots, KeyUsages: clientAuth}); err == nil {
		t.Error("etcd trusts a certificate of the cluster CA")
	}
	if _, err := os.Stat(filepath.Join(dir, "etcd-ca.key")); err == nil {
		t.Error("the etcd CA's key was written")
	}
}
