package main

import (
	"fmt"
	"strings"
)

// k8sFlags registers the --rm kubernetes flags: the common ones by name,
// every other setting of workers/kubernetes.Config as --k8s-opt key=value.
func k8sFlags(fs *flagSet) func() (map[string]string, error) {
	kubeconfig := fs.String("kubeconfig", "", "--rm kubernetes: kubeconfig file (default: in-cluster, then $KUBECONFIG, ~/.kube/config)")
	namespace := fs.String("k8s-namespace", "", "--rm kubernetes: shared namespace of kernel pods (default: default)")
	perUser := fs.Bool("k8s-per-user-namespaces", false, "--rm kubernetes: a namespace per user, created with their first kernel and deleted with the last")
	image := fs.String("k8s-image", "", "--rm kubernetes: kernel image when the kernelspec names none")
	launcherPath := fs.String("k8s-launcher-path", "", "--rm kubernetes: kernelbus-launcher inside the kernel image (default /usr/local/bin/kernelbus-launcher)")
	var opts listFlag
	fs.Var(&opts, "k8s-opt", "--rm kubernetes: any other setting as key=value (repeatable; see workers/kubernetes/config.go)")
	return func() (map[string]string, error) {
		out := map[string]string{}
		for _, o := range opts {
			k, v, ok := strings.Cut(o, "=")
			if !ok {
				return nil, fmt.Errorf("--k8s-opt %q: want key=value", o)
			}
			out[k] = v
		}
		for k, v := range map[string]string{"kubeconfig": *kubeconfig, "namespace": *namespace, "image": *image, "launcher_path": *launcherPath} {
			if v != "" {
				out[k] = v
			}
		}
		if *perUser {
			out["per_user_namespaces"] = "true"
		}
		return out, nil
	}
}
