// Package pki makes the per-boot PKI of a single-node cluster with
// crypto/x509: nothing secret is in the signed image, every key is made on the
// node at boot. Every key is ECDSA P-256 (fast to make under emulation, and
// accepted by every component, service-account tokens as ES256).
//
// etcd has a CA of its own (etcd-ca.crt, whose key is thrown away once it
// signed etcd's certificate and the API server's client certificate): etcd
// trusts every certificate its CA signed, so a kubeconfig's certificate
// from the cluster CA must not be one of them.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Options are what the PKI depends on.
type Options struct {
	Dir           string
	NodeName      string
	NodeIP        net.IP
	ServiceIP     net.IP // the first address of the service range: the kubernetes Service
	ClusterDomain string
	Server        string   // the API server URL the kubeconfigs name
	Clients       []Client // more kubeconfigs, for components the caller runs
	Now           time.Time
	Validity      time.Duration
}

// Client is one client certificate, written as NAME.kubeconfig.
type Client struct {
	Name   string // file name without .kubeconfig
	User   string // the certificate's CN: the Kubernetes user name
	Groups []string
}

// File names the node's components read (documented in cluster/README.md).
const (
	CACert                = "ca.crt"
	CAKey                 = "ca.key"
	APIServerCert         = "apiserver.crt"
	APIServerKey          = "apiserver.key"
	KubeletClientCert     = "apiserver-kubelet-client.crt"
	KubeletClientKey      = "apiserver-kubelet-client.key"
	KubeletServingCert    = "kubelet.crt"
	KubeletServingKey     = "kubelet.key"
	ServiceAccountKey     = "sa.key"
	ServiceAccountPubKey  = "sa.pub"
	EtcdCACert            = "etcd-ca.crt"
	EtcdCert              = "etcd.crt" // serving and peer (client and server auth)
	EtcdKey               = "etcd.key"
	EtcdClientCert        = "apiserver-etcd-client.crt"
	EtcdClientKey         = "apiserver-etcd-client.key"
	kubeconfigSuffix      = ".kubeconfig"
	fileMode              = 0o600
	dirMode               = 0o700
	clockSkewAllowance    = 24 * time.Hour
	defaultValidityPeriod = 365 * 24 * time.Hour
)

// StandardClients are the kubeconfigs every node needs.
func StandardClients(nodeName string) []Client {
	return []Client{
		{"admin", "cairn-admin", []string{"system:masters"}},
		{"controller-manager", "system:kube-controller-manager", nil},
		{"scheduler", "system:kube-scheduler", nil},
		{"kubelet", "system:node:" + nodeName, []string{"system:nodes"}},
		{"kube-proxy", "system:kube-proxy", nil},
	}
}

// ParseClient reads NAME=USER[,GROUP...] (the --client flag): Kubernetes
// user and group names hold colons, never an equals sign or a comma.
func ParseClient(s string) (Client, error) {
	name, rest, ok := strings.Cut(s, "=")
	fields := strings.Split(rest, ",")
	if !ok || !validFileName(name) || fields[0] == "" {
		return Client{}, fmt.Errorf("--client %q: want NAME=USER[,GROUP...] with NAME of letters, digits, - and _", s)
	}
	c := Client{Name: name, User: fields[0]}
	for _, g := range fields[1:] {
		if g == "" {
			return Client{}, fmt.Errorf("--client %q: an empty group", s)
		}
		c.Groups = append(c.Groups, g)
	}
	return c, nil
}

func validFileName(name string) bool {
	if name == "" {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

type keyPair struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

// Make writes the PKI into opts.Dir. It refuses to overwrite any file (a
// second run at the same boot is a bug in the caller), and writes nothing
// when a file it would write is already there.
func Make(opts Options) error {
	if opts.NodeIP == nil || opts.ServiceIP == nil || opts.NodeName == "" || opts.Dir == "" {
		return errors.New("the directory, node name, node IP and service IP are required")
	}
	if opts.Validity == 0 {
		opts.Validity = defaultValidityPeriod
	}
	if opts.ClusterDomain == "" {
		opts.ClusterDomain = "cluster.local"
	}
	clients := append(StandardClients(opts.NodeName), opts.Clients...)
	files := map[string][]byte{}
	seen := map[string]bool{}
	for _, c := range clients {
		if seen[c.Name] {
			return fmt.Errorf("two kubeconfigs named %s", c.Name)
		}
		seen[c.Name] = true
	}

	ca, err := issue(opts, nil, x509.Certificate{
		Subject:               pkix.Name{CommonName: "cairn-cluster-ca"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	})
	if err != nil {
		return err
	}
	if err := addPair(files, CACert, CAKey, ca); err != nil {
		return err
	}

	domain := opts.ClusterDomain
	apiserver, err := issue(opts, ca, x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc." + domain, "localhost", opts.NodeName},
		IPAddresses: uniqueIPs(opts.NodeIP, opts.ServiceIP, net.IPv4(127, 0, 0, 1)),
	})
	if err != nil {
		return err
	}
	if err := addPair(files, APIServerCert, APIServerKey, apiserver); err != nil {
		return err
	}

	// The API server's client certificate towards the kubelet (logs, exec,
	// port-forward); system:masters so that no binding is needed for it.
	kubeletClient, err := issue(opts, ca, x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return err
	}
	if err := addPair(files, KubeletClientCert, KubeletClientKey, kubeletClient); err != nil {
		return err
	}

	kubeletServing, err := issue(opts, ca, x509.Certificate{
		Subject:     pkix.Name{CommonName: "system:node:" + opts.NodeName, Organization: []string{"system:nodes"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{opts.NodeName, "localhost"},
		IPAddresses: uniqueIPs(opts.NodeIP, net.IPv4(127, 0, 0, 1)),
	})
	if err != nil {
		return err
	}
	if err := addPair(files, KubeletServingCert, KubeletServingKey, kubeletServing); err != nil {
		return err
	}

	if err := makeEtcd(opts, files); err != nil {
		return err
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if err := addKey(files, ServiceAccountKey, saKey); err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return err
	}
	files[ServiceAccountPubKey] = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub})

	for _, c := range clients {
		pair, err := issue(opts, ca, x509.Certificate{
			Subject:     pkix.Name{CommonName: c.User, Organization: c.Groups},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalECPrivateKey(pair.key)
		if err != nil {
			return err
		}
		files[c.Name+kubeconfigSuffix] = kubeconfig(opts.Server, c.User, ca.der, pair.der, keyDER)
	}
	return writeAll(opts.Dir, files)
}

// makeEtcd adds etcd's CA certificate, its serving and peer certificate
// (loopback only: etcd listens nowhere else) and the API server's client
// certificate. The CA's key is not written.
func makeEtcd(opts Options, files map[string][]byte) error {
	ca, err := issue(opts, nil, x509.Certificate{
		Subject:               pkix.Name{CommonName: "cairn-etcd-ca"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	})
	if err != nil {
		return err
	}
	files[EtcdCACert] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der})
	server, err := issue(opts, ca, x509.Certificate{
		Subject:     pkix.Name{CommonName: "etcd"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	if err != nil {
		return err
	}
	if err := addPair(files, EtcdCert, EtcdKey, server); err != nil {
		return err
	}
	client, err := issue(opts, ca, x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver-etcd-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return err
	}
	return addPair(files, EtcdClientCert, EtcdClientKey, client)
}

func uniqueIPs(ips ...net.IP) []net.IP {
	var out []net.IP
	for _, ip := range ips {
		dup := false
		for _, o := range out {
			dup = dup || o.Equal(ip)
		}
		if !dup {
			out = append(out, ip)
		}
	}
	return out
}

// issue makes a key and a certificate from template, signed by parent (nil:
// self-signed).
func issue(opts Options, parent *keyPair, template x509.Certificate) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	template.SerialNumber = serial
	template.NotBefore = opts.Now.Add(-clockSkewAllowance)
	template.NotAfter = opts.Now.Add(opts.Validity)
	if template.KeyUsage == 0 {
		template.KeyUsage = x509.KeyUsageDigitalSignature
	}
	signer, signerCert := crypto.Signer(key), &template
	if parent != nil {
		signer, signerCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, signerCert, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", template.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, der: der, key: key}, nil
}

func addPair(files map[string][]byte, certName, keyName string, p *keyPair) error {
	files[certName] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.der})
	return addKey(files, keyName, p.key)
}

func addKey(files map[string][]byte, name string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	files[name] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	return nil
}

// kubeconfig is a kubeconfig with everything inline, so that it can be read
// wherever it is copied. Every value is base64 or quoted: no YAML escaping
// issue can arise from a user name.
func kubeconfig(server, user string, caDER, certDER, keyDER []byte) []byte {
	b64 := func(typ string, der []byte) string {
		return base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
	}
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: cairn
  cluster:
    server: %q
    certificate-authority-data: %s
users:
- name: %q
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: cairn
  context:
    cluster: cairn
    user: %q
current-context: cairn
`, server, b64("CERTIFICATE", caDER), user, b64("CERTIFICATE", certDER), b64("EC PRIVATE KEY", keyDER), user))
}

// writeAll checks that no file exists yet, then creates each with mode 0600
// and O_EXCL (a file that appears in between is still never overwritten).
func writeAll(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return err
	}
	for name := range files {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return fmt.Errorf("%s already exists: cairn-pki never overwrites a PKI (remove the directory to make a new one)", filepath.Join(dir, name))
		}
	}
	for name, data := range files {
		path := filepath.Join(dir, name)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return nil
}
