package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"path"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// proxy is an HTTP reverse proxy between every S3 client of the bench
// (the sidecar, mc, the bare minio-go baseline) and MinIO. It records the
// moment MinIO answers each successful object write and delete: that is
// when the object became readable (or gone) in the store, measured the
// same way for every client. It forwards requests unchanged, Host header
// included, so SigV4 signatures still verify.
type proxy struct {
	addr string
	srv  *http.Server
	rec  atomic.Pointer[recorder]
}

// Request classes counted by the recorder.
const (
	opPut        = "put"
	opGet        = "get"
	opHead       = "head"
	opList       = "list"
	opDelete     = "delete"
	opDeleteMany = "delete_many"
	opOther      = "other"
)

// recorder holds what the proxy saw during one measurement.
type recorder struct {
	mu   sync.Mutex
	puts map[string]time.Time // object file name -> first successful PUT answer
	dels map[string]time.Time // object file name -> first successful delete answer
	ops  map[string]int       // request class -> count
}

func newRecorder() *recorder {
	return &recorder{puts: make(map[string]time.Time), dels: make(map[string]time.Time), ops: make(map[string]int)}
}

// putAt returns when the object whose key ends in name was first written.
func (r *recorder) putAt(name string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.puts[name]
	return t, ok
}

// delAt returns when the object whose key ends in name was first deleted.
func (r *recorder) delAt(name string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.dels[name]
	return t, ok
}

// counts returns a copy of the request counts.
func (r *recorder) counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.ops))
	for k, v := range r.ops {
		out[k] = v
	}
	return out
}

type reqInfo struct {
	op   string
	name string   // file name of the key (put, delete)
	keys []string // file names of a multi-object delete
	rec  *recorder
}

type ctxKey struct{}

// startProxy listens on a free 127.0.0.1 port and forwards to target.
func startProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{addr: ln.Addr().String()}
	p.rec.Store(newRecorder())
	rp := &httputil.ReverseProxy{
		Director: func(r *http.Request) {
			r.URL.Scheme = "http"
			r.URL.Host = target
			// r.Host stays the proxy's address: it is signed.
		},
		Transport: &http.Transport{
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		ModifyResponse: func(resp *http.Response) error {
			if ri, ok := resp.Request.Context().Value(ctxKey{}).(*reqInfo); ok {
				ri.rec.answer(ri, resp.StatusCode, time.Now())
			}
			return nil
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ri := p.classify(r)
		rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, ri)))
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go func() {
		pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("role", "proxy")))
		p.srv.Serve(ln)
	}()
	return p, nil
}

// reset starts a new recording and returns it.
func (p *proxy) reset() *recorder {
	r := newRecorder()
	p.rec.Store(r)
	return r
}

func (p *proxy) close() { p.srv.Close() }

// classify names the request's class and, for writes and deletes, the
// file names of the keys involved (path-style requests: /bucket/key).
func (p *proxy) classify(r *http.Request) *reqInfo {
	ri := &reqInfo{op: opOther, rec: p.rec.Load()}
	segs := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)
	hasKey := len(segs) == 2 && segs[1] != ""
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodPut && hasKey && !q.Has("uploadId") && !q.Has("tagging"):
		ri.op, ri.name = opPut, path.Base(r.URL.Path)
	case r.Method == http.MethodGet && hasKey:
		ri.op = opGet
	case r.Method == http.MethodHead && hasKey:
		ri.op = opHead
	case r.Method == http.MethodGet && !hasKey && (q.Has("list-type") || q.Has("prefix") || len(q) == 0):
		ri.op = opList
	case r.Method == http.MethodDelete && hasKey:
		ri.op, ri.name = opDelete, path.Base(r.URL.Path)
	case r.Method == http.MethodPost && !hasKey && q.Has("delete"):
		ri.op = opDeleteMany
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(body))
		if err == nil {
			var d struct {
				Objects []struct {
					Key string `xml:"Key"`
				} `xml:"Object"`
			}
			if xml.Unmarshal(body, &d) == nil {
				for _, o := range d.Objects {
					ri.keys = append(ri.keys, path.Base(o.Key))
				}
			}
		}
	}
	ri.rec.mu.Lock()
	ri.rec.ops[ri.op]++
	ri.rec.mu.Unlock()
	return ri
}

// answer records a successful write or delete at t.
func (r *recorder) answer(ri *reqInfo, status int, t time.Time) {
	if status/100 != 2 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch ri.op {
	case opPut:
		if _, ok := r.puts[ri.name]; !ok {
			r.puts[ri.name] = t
		}
	case opDelete:
		if _, ok := r.dels[ri.name]; !ok {
			r.dels[ri.name] = t
		}
	case opDeleteMany:
		for _, k := range ri.keys {
			if _, ok := r.dels[k]; !ok {
				r.dels[k] = t
			}
		}
	}
}
