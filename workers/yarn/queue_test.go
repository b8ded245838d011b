package yarn

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/kernelbus/kernelbus/workers"
	"github.com/rs/zerolog"
)

// The shapes below follow the ResourceManager REST API's documented
// answers for /ws/v1/cluster/scheduler (capacity and fair schedulers),
// trimmed to the fields the check reads plus a few it must ignore. The
// real capacity scheduler's answer is exercised by TestPySparkOnYARN.
const capacityAnswer = `{"scheduler":{"schedulerInfo":{
  "type":"capacityScheduler","capacity":100.0,"usedCapacity":25.0,"maxCapacity":100.0,"queueName":"root","queuePath":"root",
  "queues":{"queue":[
    {"type":"capacitySchedulerLeafQueueInfo","queueName":"default","queuePath":"root.default","state":"RUNNING",
     "absoluteMaxCapacity":50.0,"resourcesUsed":{"memory":3072,"vCores":2},"numActiveApplications":1,
     "AMResourceLimit":{"memory":2048,"vCores":1},"usedAMResource":{"memory":1024,"vCores":1}},
    {"queueName":"analytics","queuePath":"root.analytics","absoluteMaxCapacity":50.0,"state":"RUNNING",
     "queues":{"queue":[
       {"type":"capacitySchedulerLeafQueueInfo","queueName":"adhoc","queuePath":"root.analytics.adhoc","state":"STOPPED",
        "absoluteMaxCapacity":50.0,"resourcesUsed":{"memory":0,"vCores":0}}]}}]}}}}`

const fairAnswer = `{"scheduler":{"schedulerInfo":{"type":"fairScheduler","rootQueue":{
  "queueName":"root","maxResources":{"memory":8192,"vCores":8},"usedResources":{"memory":1024,"vCores":1},
  "childQueues":{"queue":[
    {"type":"fairSchedulerLeafQueueInfo","queueName":"root.etl","maxResources":{"memory":2048,"vCores":2},"usedResources":{"memory":1536,"vCores":1}}]}}}}}`

func fakeRM(t *testing.T, scheduler string, totalMB, availMB int) *Backend {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ws/v1/cluster/scheduler":
			_, _ = io.WriteString(w, scheduler)
		case "/ws/v1/cluster/metrics":
			_, _ = io.WriteString(w, `{"clusterMetrics":{"totalMB":`+strconv.Itoa(totalMB)+`,"availableMB":`+strconv.Itoa(availMB)+`,"activeNodes":1}}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	rm, err := NewRM(srv.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	return &Backend{rm: rm, log: zerolog.Nop()}
}

func TestQueueCheck(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name, scheduler string
		args            []string
		availMB         int    // free in the cluster, of 16384 MB
		wantErr         string // "" = admitted
		wantStatus      int    // the HTTP status the start answers with
	}{
		// default: 50 % of 16384 MB = 8192, 3072 used; AM share 2048, 1024 used.
		{"capacity: fits", capacityAnswer, []string{"--conf", "spark.driver.memory=512m"}, 15000, "", 0},
		{"capacity: AM share full", capacityAnswer, []string{"--driver-memory", "1g"}, 15000, `application masters use 1024 MB of the 2048 MB`, 503},
		{"capacity: no room now", capacityAnswer, []string{"--conf", "spark.driver.memory=6g"}, 15000, `queue "default" has 5120 MB free (3072 MB used of its 8192 MB maximum) and the driver needs 6758 MB`, 503},
		{"capacity: bigger than the queue", capacityAnswer, []string{"--conf", "spark.driver.memory=8g"}, 15000, `queue "default" holds at most 8192 MB and the driver needs 9011 MB: ask for less (spark.driver.memory)`, 400},
		{"capacity: unknown queue", capacityAnswer, []string{"--queue", "nosuch"}, 15000, `YARN has no queue "nosuch" (its queues: root.analytics.adhoc, root.default)`, 400},
		{"capacity: stopped queue by path", capacityAnswer, []string{"--conf", "spark.yarn.queue=root.analytics.adhoc"}, 15000, `is STOPPED`, 409},
		{"capacity: overhead counted", capacityAnswer, []string{"--conf", "spark.driver.memory=512m", "--conf", "spark.driver.memoryOverhead=2g"}, 15000, `needs 2560 MB`, 503},
		{"fair: fits", fairAnswer, []string{"--queue", "etl", "--driver-memory", "100m"}, 15000, "", 0},
		{"fair: no room now", fairAnswer, []string{"--queue", "root.etl", "--driver-memory", "512m"}, 15000, `queue "root.etl" has 512 MB free`, 503},
		{"fifo: cluster full", `{"scheduler":{"schedulerInfo":{"type":"fifoScheduler","capacity":1.0}}}`, nil, 1000, `YARN has 1000 MB free of 16384 MB and the driver needs 1408 MB`, 503},
		{"fifo: bigger than the cluster", `{"scheduler":{"schedulerInfo":{"type":"fifoScheduler","capacity":1.0}}}`, []string{"--driver-memory", "20g"}, 16384, `YARN has 16384 MB in all and the driver needs 22528 MB`, 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := fakeRM(t, c.scheduler, 16384, c.availMB)
			err := b.checkCapacity(ctx, c.args)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("got %v, want an error containing %q", err, c.wantErr)
			case c.wantErr != "" && workers.RefusedStatus(err) != c.wantStatus:
				t.Fatalf("%v: answers %d, want %d", err, workers.RefusedStatus(err), c.wantStatus)
			}
		})
	}
}

// TestReport: the overview's view of the RM, from the documented answers
// (the real RM's is checked by TestPySparkOnYARN through /api/cluster).
func TestReport(t *testing.T) {
	b := fakeRM(t, capacityAnswer, 16384, 12000)
	v, err := b.Report(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rep := v.(map[string]any)
	if m := rep["metrics"].(*ClusterMetrics); m.TotalMB != 16384 || m.AvailableMB != 12000 || m.ActiveNodes != 1 {
		t.Errorf("metrics: %+v", m)
	}
	qs := rep["queues"].([]QueueUse)
	if len(qs) != 2 || qs[0].Path != "root.default" || qs[0].UsedMB != 3072 || qs[0].ActiveApps != 1 || qs[1].Path != "root.analytics.adhoc" {
		t.Errorf("queues: %+v", qs)
	}
	if !strings.HasPrefix(rep["web"].(string), "http://127.0.0.1:") {
		t.Errorf("web: %v", rep["web"])
	}
	b = fakeRM(t, fairAnswer, 8192, 8192)
	v, _ = b.Report(context.Background())
	if qs := v.(map[string]any)["queues"].([]QueueUse); len(qs) != 1 || qs[0].Path != "root.etl" || qs[0].UsedMB != 1536 || qs[0].MaxMB != 2048 {
		t.Errorf("fair queues: %+v", qs)
	}
}
