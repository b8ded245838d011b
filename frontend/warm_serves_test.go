package frontend

import (
	"testing"

	"github.com/kernelbus/kernelbus/broker"
)

// What a warm kernel can serve: KERNEL_USERNAME only where the kernel runs
// as the same user whoever takes it (local kernels, or a resource manager
// that does not impersonate); any other env it lacks never.
func TestWarmServes(t *testing.T) {
	user := map[string]string{broker.EnvUsername: "alice"}
	for _, c := range []struct {
		name   string
		rm     string
		warm   broker.Warm
		env    map[string]string
		serves bool
	}{
		{"local, a user", broker.RMLocal, broker.Warm{}, user, true},
		{"yarn impersonating, a user", broker.RMYarn, broker.Warm{}, user, false},
		{"yarn as the worker's user, a user", broker.RMYarn, broker.Warm{AnyUser: true}, user, true},
		{"yarn, no user", broker.RMYarn, broker.Warm{}, map[string]string{broker.EnvLaunchTimeout: "360"}, true},
		{"yarn, custom env", broker.RMYarn, broker.Warm{AnyUser: true}, map[string]string{"KERNEL_EXTRA_SPARK_OPTS": "--queue q"}, false},
		{"yarn, accepted env", broker.RMYarn, broker.Warm{Accept: []string{"KERNEL_WORKING_DIR"}}, map[string]string{"KERNEL_WORKING_DIR": "/x"}, true},
	} {
		k := &broker.Kernel{Warm: &c.warm}
		if why := warmServes(k, c.rm, c.env); (why == "") != c.serves {
			t.Errorf("%s: warmServes says %q, want serves=%v", c.name, why, c.serves)
		}
	}
}
