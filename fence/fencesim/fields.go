package fencesim

import (
	"bytes"
	"strconv"

	"github.com/mmsidecar/mmsidecar/fence"
)

// The G3 checks read a few fields of every lease and claim written. Full
// JSON decoding of each body is a large share of a run under the race
// detector, so the fields are picked out of the compact JSON that
// encoding/json writes; anything unexpected falls back to the decoder.

func jsonField(data []byte, name string) ([]byte, bool) {
	var pat [40]byte
	p := append(pat[:0], '"')
	p = append(p, name...)
	p = append(p, '"', ':')
	i := bytes.Index(data, p)
	if i < 0 {
		return nil, false
	}
	v := data[i+len(p):]
	if len(v) > 0 && v[0] == '"' {
		j := bytes.IndexByte(v[1:], '"')
		if j < 0 || bytes.IndexByte(v[1:j+1], '\\') >= 0 {
			return nil, false
		}
		return v[1 : j+1], true
	}
	j := bytes.IndexAny(v, ",}")
	if j < 0 {
		return nil, false
	}
	return v[:j], true
}

func jsonUint(data []byte, name string) (uint64, bool) {
	v, ok := jsonField(data, name)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	return n, err == nil
}

type claimFields struct {
	owner, from string
	token       uint64
	handoff     bool
}

func parseClaim(data []byte) (claimFields, error) {
	owner, ok1 := jsonField(data, "owner")
	from, ok2 := jsonField(data, "from")
	token, ok3 := jsonUint(data, "token")
	if ok1 && ok2 && ok3 && fence.ValidName(string(owner)) && fence.ValidName(string(from)) {
		h, _ := jsonField(data, "handoff")
		return claimFields{owner: string(owner), from: string(from), token: token, handoff: string(h) == "true"}, nil
	}
	c, err := fence.DecodeClaim(data)
	if err != nil {
		return claimFields{}, err
	}
	return claimFields{owner: c.Owner, from: c.From, token: c.Token, handoff: c.Handoff}, nil
}

func parseLease(data []byte) (epoch, seq uint64, err error) {
	e, ok1 := jsonUint(data, "epoch")
	s, ok2 := jsonUint(data, "seq")
	if ok1 && ok2 {
		return e, s, nil
	}
	l, err := fence.DecodeLease(data)
	return l.Epoch, l.Seq, err
}
