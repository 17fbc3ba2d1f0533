package main

import (
	"flag"

	"github.com/coredns/coredns/coremain"

	// The plugins a node's cluster DNS uses, instead of upstream's every
	// plugin (core/plugin): the cluster is air-gapped, so nothing forwards.
	// A Corefile naming any other plugin fails to load.
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// corednsMain is github.com/coredns/coredns/coredns.go with fewer plugins;
// coremain parses the process's flag set (os.Args).
func corednsMain() int {
	coremain.Run()
	return 0
}

// corednsGoFlags are the flags coremain's init() defines on the process's
// flag set (coremain/run.go). kube-proxy adds that whole set to its own
// flags, so without dropCorednsGoFlags it would take coredns's --conf,
// --pidfile, -p... and its --version would be coredns's, which does nothing
// there.
var corednsGoFlags = map[string]bool{
	"conf": true, "plugins": true, "pidfile": true, "version": true,
	"quiet": true, "log-format": true, "dns.port": true, "p": true,
}

// dropCorednsGoFlags replaces the process's flag set by one without
// coredns's flags; every other component runs with it.
func dropCorednsGoFlags() {
	old := flag.CommandLine
	fresh := flag.NewFlagSet(old.Name(), old.ErrorHandling())
	old.VisitAll(func(f *flag.Flag) {
		if !corednsGoFlags[f.Name] {
			fresh.Var(f.Value, f.Name, f.Usage)
		}
	})
	flag.CommandLine = fresh
}
