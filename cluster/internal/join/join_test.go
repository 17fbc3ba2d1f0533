package join

import (
	"strings"
	"testing"

	"k8s.io/cluster-bootstrap/token/jws"
)

func signed(t *testing.T, server, id, secret string) map[string]string {
	t.Helper()
	kc, err := BootstrapKubeconfig(server, "", []byte("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := jws.ComputeDetachedSignature(string(kc), id, secret)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"kubeconfig": string(kc), "jws-kubeconfig-" + id: sig}
}

func TestOnlyTheTokensSignatureIsTrusted(t *testing.T) {
	data := signed(t, "10.0.2.15", "abcdef", "0123456789abcdef")
	ca, err := Verify(data, "abcdef", "0123456789abcdef", "10.0.2.15")
	if err != nil || !strings.Contains(string(ca), "CA") {
		t.Fatalf("the right token: %v", err)
	}
	// Another secret (a server that does not know this site's token).
	if _, err := Verify(data, "abcdef", "fedcba9876543210", "10.0.2.15"); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("another secret verified: %v", err)
	}
	// Another token id: no signature at all.
	if _, err := Verify(data, "zzzzzz", "0123456789abcdef", "10.0.2.15"); err == nil || !strings.Contains(err.Error(), "not signed") {
		t.Fatalf("another id verified: %v", err)
	}
	// The kubeconfig changed after signing (another CA).
	bad := map[string]string{"kubeconfig": strings.Replace(data["kubeconfig"], "10.0.2.15", "10.0.2.66", 1), "jws-kubeconfig-abcdef": data["jws-kubeconfig-abcdef"]}
	if _, err := Verify(bad, "abcdef", "0123456789abcdef", "10.0.2.66"); err == nil {
		t.Fatal("a changed kubeconfig verified")
	}
	// Signed, but naming a server other than the one asked.
	if _, err := Verify(data, "abcdef", "0123456789abcdef", "10.0.2.16"); err == nil || !strings.Contains(err.Error(), "names server") {
		t.Fatalf("another server: %v", err)
	}
}

func TestFlagsAreChecked(t *testing.T) {
	var out, errOut strings.Builder
	if rc := Main([]string{"--server", "example.com", "--dir", "/tmp/x", "--token-file", "/nonexistent"}, &out, &errOut); rc != 2 {
		t.Fatalf("rc %d", rc)
	}
	if !strings.Contains(errOut.String(), "not an IPv4 address") {
		t.Fatal(errOut.String())
	}
}
