package fence

import "context"

// ClaimsPassNow runs one claims pass at once, light or full, whatever is
// due.
func ClaimsPassNow(ctx context.Context, n *Node, light bool) error {
	return n.claimsPass(ctx, light)
}
