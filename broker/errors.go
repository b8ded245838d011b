package broker

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is a gateway error: an HTTP status, a stable code that clients and
// tests can match with errors.Is, and a message that says what to fix. One
// error handler in the front-end renders it as {"reason","message"}.
type Error struct {
	Status  int    // HTTP status
	Code    string // stable, machine-readable
	Message string // for the user: what is wrong and what to do
	Err     error  // cause, if any
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches by Code, so errors.Is(err, ErrKernelNotFound) holds for any
// kernel-not-found error whatever its message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Reason is the short reason phrase of the status.
func (e *Error) Reason() string { return http.StatusText(e.Status) }

// Sentinel errors; build concrete ones with Errorf.
var (
	ErrKernelNotFound  = &Error{Status: 404, Code: "kernel_not_found", Message: "kernel does not exist"}
	ErrSpecNotFound    = &Error{Status: 404, Code: "kernelspec_not_found", Message: "kernel spec not found"}
	ErrSessionNotFound = &Error{Status: 404, Code: "session_not_found", Message: "session not found"}
	ErrNotFound        = &Error{Status: 404, Code: "not_found", Message: "not found"}
	ErrBadRequest      = &Error{Status: 400, Code: "bad_request", Message: "bad request"}
	ErrBadEnv          = &Error{Status: 400, Code: "bad_env", Message: "bad env"}
	ErrUnauthorized    = &Error{Status: 401, Code: "unauthorized", Message: "a valid token is required"}
	ErrForbidden       = &Error{Status: 403, Code: "forbidden", Message: "forbidden"}
	ErrLimit           = &Error{Status: 403, Code: "resource_limit", Message: "resource limit reached"}
	ErrTooManyRequests = &Error{Status: 429, Code: "too_many_requests", Message: "too many requests"}
	ErrMediaType       = &Error{Status: 415, Code: "unsupported_media_type", Message: "the body must be application/json"}
	ErrConflict        = &Error{Status: 409, Code: "conflict", Message: "conflict"}
	ErrStartFailed     = &Error{Status: 500, Code: "start_failed", Message: "kernel failed to start"}
	ErrStartTimeout    = &Error{Status: 504, Code: "start_timeout", Message: "kernel did not start in time"}
	ErrKernelGone      = &Error{Status: 404, Code: "kernel_gone", Message: "kernel is not running"}
	ErrUnavailable     = &Error{Status: 503, Code: "unavailable", Message: "service unavailable"}
	ErrInternal        = &Error{Status: 500, Code: "internal", Message: "internal error"}
)

// Errorf returns an error of the same status and code as kind with a new
// message.
func Errorf(kind *Error, format string, args ...any) *Error {
	return &Error{Status: kind.Status, Code: kind.Code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns kind with cause attached.
func Wrap(kind *Error, cause error, format string, args ...any) *Error {
	return &Error{Status: kind.Status, Code: kind.Code, Message: fmt.Sprintf(format, args...), Err: cause}
}

// AsError finds the *Error in err's chain, or wraps err as an internal one.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Status: 500, Code: "internal", Message: err.Error()}
}
