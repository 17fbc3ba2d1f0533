package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	good := []string{"--dir", dir, "--node-name", "n1", "--node-ip", "192.168.76.2", "--service-ip", "10.96.0.1"}
	for _, bad := range [][]string{
		{"--dir", dir, "--node-name", "n1", "--node-ip", "not-an-ip", "--service-ip", "10.96.0.1"},
		{"--dir", dir, "--node-name", "n1", "--node-ip", "192.168.76.2"},
		append(append([]string{}, good...), "--client", "x"),
		append(append([]string{}, good...), "--server", "http://127.0.0.1:6443"),
		append(append([]string{}, good...), "extra"),
	} {
		if code := run(bad); code != 2 {
			t.Errorf("run(%q) = %d, want 2", bad, code)
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Fatal("bad flags wrote a PKI")
	}
	if code := run(good); code != 0 {
		t.Fatalf("run = %d", code)
	}
	// Control for the refusal: the same run again must not overwrite.
	if code := run(good); code != 1 {
		t.Fatalf("second run = %d, want 1", code)
	}
}
