package main

import (
	"github.com/kernelbus/kernelbus/broker"
	kbssh "github.com/kernelbus/kernelbus/workers/ssh"
)

// sshFlags registers --ssh-<option> for each option of the ssh backend and
// returns a function that gives the options that were set.
func sshFlags(fs *flagSet) func() map[string]string {
	vals := map[string]*string{}
	for _, o := range kbssh.Options {
		vals[o.Name] = fs.String("ssh-"+o.Name, "", "--rm ssh: "+o.Help)
	}
	return func() map[string]string {
		out := map[string]string{}
		for n, v := range vals {
			if *v != "" {
				out[n] = *v
			}
		}
		return out
	}
}

// backendOptions picks the options of resource manager rm.
func backendOptions(rm string, ssh func() map[string]string) map[string]string {
	if rm == broker.RMSSH {
		return ssh()
	}
	return nil
}
