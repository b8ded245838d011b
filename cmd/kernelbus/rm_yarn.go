package main

import (
	"strconv"
	"strings"
)

// yarnFlags registers the flags of `worker --rm yarn` and returns a
// function that gives the backend's options.
func yarnFlags(fs *flagSet) func() (map[string]string, error) {
	endpoint := fs.String("yarn-endpoint", "", "--rm yarn: ResourceManager web address (http://host:8088)")
	alt := fs.String("yarn-alt-endpoint", "", "--rm yarn: the other ResourceManager of an HA pair")
	sparkHome := fs.String("spark-home", "", "--rm yarn: Spark installation holding bin/spark-submit (default $SPARK_HOME; a spec's SPARK_HOME wins)")
	var conf listFlag
	fs.Var(&conf, "yarn-spark-conf", "--rm yarn: spark conf key=value added to every submission (repeatable), e.g. spark.yarn.archive=hdfs:///spark/libs.zip")
	imp := fs.Bool("yarn-impersonation", false, "--rm yarn: submit with --proxy-user KERNEL_USERNAME")
	queueCheck := fs.Bool("yarn-queue-check", false, "--rm yarn: before submitting, refuse a start its queue cannot take (no such queue, queue stopped, no room for the driver)")
	user := fs.String("yarn-user", "", "--rm yarn: user.name sent on ResourceManager REST calls that change state (kills) under simple auth (default: the worker's OS user)")
	return func() (map[string]string, error) {
		return map[string]string{
			"endpoint": *endpoint, "alt-endpoint": *alt, "spark-home": *sparkHome,
			"spark-conf": strings.Join(conf, "\n"), "impersonation": strconv.FormatBool(*imp),
			"queue-check": strconv.FormatBool(*queueCheck), "user": *user,
		}, nil
	}
}
