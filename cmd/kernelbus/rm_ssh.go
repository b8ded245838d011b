package main

import (
	kbssh "github.com/kernelbus/kernelbus/workers/ssh"
)

// sshFlags registers --ssh-<option> for each option of the ssh backend and
// returns a function that gives the options that were set.
func sshFlags(fs *flagSet) func() (map[string]string, error) {
	vals := map[string]*string{}
	for _, o := range kbssh.Options {
		vals[o.Name] = fs.String("ssh-"+o.Name, "", "--rm ssh: "+o.Help)
	}
	return func() (map[string]string, error) {
		out := map[string]string{}
		for n, v := range vals {
			if *v != "" {
				out[n] = *v
			}
		}
		return out, nil
	}
}
