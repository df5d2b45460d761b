// The owner of a request, for `hash $countiq_owner consistent` (njs).
//
// The owner is the `sub` claim of the bearer token (a JWT). This script
// only DECODES the payload, it does not verify the signature: the proxy
// holds no secret, and does not need to. The node verifies every token
// (HS256, exp, nbf) and answers 401 to a bad one; a forged `sub` can only
// choose which node says 401 (or 421, for a valid token of another owner
// sent by hand), never reach another owner's data.
//
// Anything that is not a well-formed token hashes as the empty owner: it
// goes to one fixed node, which answers 401 (or serves /healthz etc.).

function owner(r) {
    var auth = r.headersIn.Authorization;
    auth = auth ? auth.trim() : auth;
    if (!auth || auth.length > 4096 || auth.slice(0, 7).toLowerCase() !== 'bearer ') {
        return '';
    }
    var parts = auth.slice(7).trim().split('.');
    if (parts.length !== 3) {
        return '';
    }
    try {
        var claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
        return typeof claims.sub === 'string' ? claims.sub : '';
    } catch (e) {
        return '';
    }
}

export default { owner };
