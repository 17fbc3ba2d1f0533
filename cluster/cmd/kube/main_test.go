package main

import (
	"flag"
	"testing"
)

func TestDropCorednsGoFlags(t *testing.T) {
	// Control: coremain's init() has put its flags on the process's flag set.
	if flag.Lookup("conf") == nil || flag.Lookup("version") == nil {
		t.Fatal("coredns's flags are not on flag.CommandLine: the test would see nothing")
	}
	var others []string
	flag.VisitAll(func(f *flag.Flag) {
		if !corednsGoFlags[f.Name] {
			others = append(others, f.Name)
		}
	})
	dropCorednsGoFlags()
	for name := range corednsGoFlags {
		if flag.Lookup(name) != nil {
			t.Errorf("--%s is still on flag.CommandLine", name)
		}
	}
	for _, name := range others {
		if flag.Lookup(name) == nil {
			t.Errorf("--%s (not coredns's) was dropped", name)
		}
	}
}
