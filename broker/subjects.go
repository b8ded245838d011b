// Package broker holds kernelbus's shared vocabulary: subject names, the bus
// message envelope, the kernel record and its lifecycle, events, kernelspecs
// and the start-time policy. It does no I/O of its own, so every other part
// (front-end, workers, launcher) agrees on one definition of each name.
package broker

import "strings"

// Streams and buckets. Every name the bus knows lives in this file.
const (
	// StreamRequests is the work-queue stream of start and stop requests,
	// one subject per verb and resource manager (SubjectRequest).
	StreamRequests = "KB_REQUESTS"
	// StreamEvents is the audit log: every lifecycle event, long retention.
	StreamEvents = "KB_EVENTS"
	// StreamIO holds kernel traffic in both directions and is the replay
	// window for reconnecting clients (short retention, per-subject caps).
	StreamIO = "KB_IO"

	// BucketKernels holds one Kernel record per kernel id.
	BucketKernels = "kb_kernels"
	// BucketActivity holds one Activity per kernel id, written only by the
	// kernel's launcher (execution_state, last_activity).
	BucketActivity = "kb_activity"
	// BucketSessions holds one ClientSession per "<kernel>.<session>": the
	// replay cursor of each websocket session and whether it is connected.
	BucketSessions = "kb_sessions"
	// BucketNotebookSessions holds the /api/sessions entries by id.
	BucketNotebookSessions = "kb_nbsessions"
	// BucketWorkers holds worker presence, one key per worker id (TTL).
	BucketWorkers = "kb_workers"
	// BucketLeases holds named leases (TTL) for duties that run in one
	// process of the installation at a time, such as the idle culler.
	BucketLeases = "kb_leases"
	// BucketHandles holds the trusted handle of each kernel (what its
	// worker's resource manager started), written only by workers: a
	// launcher may write its own kernel record, so stops never act on a
	// handle read from the record.
	BucketHandles = "kb_handles"
	// BucketLimits holds per-user kernel slots ("u.<user>.<n>" -> the
	// kernel holding it): taking one is an atomic create, so a per-user
	// limit holds across front-ends that start kernels at once.
	BucketLimits = "kb_limits"
)

// Subject wildcards, for stream definitions and subscriptions.
const (
	// SubjectRequestsAll captures every start/stop request.
	SubjectRequestsAll = "kb.req.>"
	// SubjectEventsAll captures every lifecycle event of every kernel.
	SubjectEventsAll = "kb.evt.>"
	// SubjectIOAll captures every kernel's traffic.
	SubjectIOAll = "kb.io.>"
)

// Request verbs on the work queue.
const (
	VerbStart = "start"
	VerbStop  = "stop"
)

// SubjectRequest is where a request of verb for resource manager rm goes:
// kb.req.<verb>.<rm>. A worker pool filters on kb.req.*.<rm>.
func SubjectRequest(verb, rm string) string { return "kb.req." + verb + "." + rm }

// SubjectRequestsFor is the filter a pool of resource manager rm consumes.
func SubjectRequestsFor(rm string) string { return "kb.req.*." + rm }

// SubjectEvent is where an event of type typ about kernel id goes:
// kb.evt.<kernel>.<type>.
func SubjectEvent(kernelID, typ string) string { return "kb.evt." + kernelID + "." + typ }

// SubjectEventsOf captures every event of one kernel.
func SubjectEventsOf(kernelID string) string { return "kb.evt." + kernelID + ".*" }

// SubjectIn carries client messages to the kernel's launcher: kb.io.<kernel>.in.
func SubjectIn(kernelID string) string { return "kb.io." + kernelID + ".in" }

// SubjectOut carries kernel messages of one channel to the front-ends:
// kb.io.<kernel>.out.<channel>.
func SubjectOut(kernelID, channel string) string { return "kb.io." + kernelID + ".out." + channel }

// SubjectOutAll captures every outgoing channel of one kernel, large
// output included: what the stream keeps and a websocket's consumer reads.
func SubjectOutAll(kernelID string) string { return "kb.io." + kernelID + ".out.>" }

// LiveMax is the largest kernel output (bus message body) that travels on
// SubjectOut, where front-ends also receive it live (core NATS); a larger
// one, and every chunk of one over max_payload, goes on SubjectOutLarge.
// Live delivery saves a stream round trip, which matters for small
// messages only, while every live subscription costs the front-end's
// connection a copy of each message: large outputs to a few sockets would
// overrun the server's per-connection pending limit.
const LiveMax = 1 << 20

// SubjectOutLarge carries kernel output of one channel larger than LiveMax:
// kb.io.<kernel>.out.<channel>.large. The stream keeps it and websocket
// consumers read it (SubjectOutAll) in order with the rest; live
// subscriptions (SubjectOutLive) do not see it.
func SubjectOutLarge(kernelID, channel string) string {
	return LargeSubject(SubjectOut(kernelID, channel))
}

// LargeSubject is the large-output form of an output subject (of
// SubjectOut), itself if it is one already.
func LargeSubject(subj string) string {
	if strings.HasSuffix(subj, largeSuffix) {
		return subj
	}
	return subj + largeSuffix
}

const largeSuffix = ".large"

// SubjectOutLive is what a front-end's live subscription takes: every
// channel of one kernel, not the large output (kb.io.<kernel>.out.*).
func SubjectOutLive(kernelID string) string { return "kb.io." + kernelID + ".out.*" }

// SubjectControl is the request/reply subject of a kernel's launcher
// (interrupt, restart, shutdown, ping): kb.ctl.<kernel>.
func SubjectControl(kernelID string) string { return "kb.ctl." + kernelID }

// SubjectFrontend is the request/reply subject of one front-end instance:
// kb.fe.<frontend>. Other front-ends ask it to release a websocket session
// that moved to them (SessionRelease).
func SubjectFrontend(frontendID string) string { return "kb.fe." + frontendID }

// InputConsumer names the durable pull consumer of KB_IO that a worker
// creates for a kernel's input (filter kb.io.<kernel>.in) and its launcher
// pulls from: kin-<kernel>.
func InputConsumer(kernelID string) string { return "kin-" + kernelID }

// WorkerConsumer names the durable consumer of KB_REQUESTS that the pool of
// resource manager rm claims from: workers-<rm>.
func WorkerConsumer(rm string) string { return "workers-" + rm }

// InboxPrefix is the reply-inbox prefix of a launcher's connection,
// _KB_INBOX.<kernel>: its credentials let it subscribe there and nowhere
// else but its control subject and record key.
func InboxPrefix(kernelID string) string { return "_KB_INBOX." + kernelID }

// ChannelFromSubject returns the channel of a kb.io.<kernel>.out.<channel>
// subject (or of its .large form), or "" if subj is not one.
func ChannelFromSubject(subj string) string {
	i := strings.LastIndex(subj, ".out.")
	if i < 0 {
		return ""
	}
	ch := subj[i+len(".out."):]
	if j := strings.IndexByte(ch, '.'); j >= 0 {
		ch = ch[:j]
	}
	return ch
}

// NATS headers carried by kernel traffic. They hold the routing facts so
// that nobody has to parse a message body to route it.
const (
	// HeaderChannel is the Jupyter channel: shell, control, stdin, iopub.
	HeaderChannel = "Kb-Channel"
	// HeaderMsgType is header.msg_type of the message.
	HeaderMsgType = "Kb-Msg-Type"
	// HeaderMsgID is header.msg_id of the message.
	HeaderMsgID = "Kb-Msg-Id"
	// HeaderSession is the websocket session_id a message belongs to: on
	// input the sender's, on output the session whose request it answers
	// (empty for output nobody asked for, such as a restart's status).
	HeaderSession = "Kb-Session"
	// HeaderParentType is parent_header.msg_type of an outgoing message,
	// which activity tracking needs.
	HeaderParentType = "Kb-Parent-Type"
	// HeaderVersion is the envelope version; see EnvelopeVersion.
	HeaderVersion = "Kb-V"
	// HeaderChunk marks one part of a message too large for one bus
	// message: "<index>/<count>" (0-based), with HeaderChunkID naming the
	// message it belongs to.
	HeaderChunk   = "Kb-Chunk"
	HeaderChunkID = "Kb-Chunk-Id"
	// HeaderBatch marks a bus message that carries several whole kernel
	// messages of one channel (see AppendBatch): their count. The per
	// message headers (msg id and type, session, parent type) are then
	// absent; each frame's own header says them.
	HeaderBatch = "Kb-Batch"
	// HeaderInSeq numbers client input: "<sender>.<n>", the sender being
	// one websocket connection of a front-end (a fresh id without dots)
	// and n its messages from 1. The launcher receives input live (core
	// NATS) as well as from the stream, and delivers the live copy only
	// when it is the next number of a sender whose previous message it
	// handled, so the kernel gets each message once and in order.
	HeaderInSeq = "Kb-In-Seq"
	// HeaderType names the Go type of a JSON body on non-io subjects
	// (requests, events, control), e.g. "start-request/1".
	HeaderType = "Kb-Type"
)

// EnvelopeVersion is the version of the kernel-traffic envelope: the body is
// a v1.kernel.websocket.jupyter.org frame (see Frame).
const EnvelopeVersion = "1"
