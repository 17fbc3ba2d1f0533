package main

import (
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
