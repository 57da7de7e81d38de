// A real OpenID Provider for stoa-api's sign-in tests: node-oidc-provider (a certified
// implementation) on a loopback port, with one confidential test client and test users.
//
// Usage: node oidc-provider.mjs '<json>' where json is
//   { "port": 0, "clientId": "stoa", "clientSecret": "…", "redirectUris": ["…"],
//     "users": { "alice": { "email": "…", "email_verified": true, "name": "…" } } }
// Prints `listening <issuer>` once it serves.
//
// Sign-in uses the provider's development interactions: POST the interaction page with
// `prompt=login&login=<user>&password=x`, then with `prompt=consent`.
//
// Test controls (only here, never in a real provider):
//   POST /__test/rotate   signs with a new key from now on (the JWKS publishes it, and
//                         keeps the old one when ?keep=1)
//   POST /__test/tamper   the next token response's ID token is re-signed with changes:
//                         {"iss": "...", "aud": "...", "exp": -60, "iat": -3600, "nonce": "...",
//                          "at_hash": "...", "azp": "...", "foreignKey": true}
import http from 'node:http';
import { generateKeyPair, exportJWK, importJWK, SignJWT, decodeJwt, decodeProtectedHeader } from 'jose';
import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2] ?? '{}');

async function newKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  jwk.kid = `k${Date.now()}${Math.floor(Math.random() * 1e6)}`;
  jwk.alg = 'RS256';
  jwk.use = 'sig';
  return jwk;
}

let keys = [await newKey()];
let tamper = null;
let provider;
let issuer;

function account(id) {
  const user = (config.users ?? {})[id] ?? {};
  return {
    accountId: id,
    async claims() {
      return { sub: id, preferred_username: id, ...user };
    },
  };
}

function build() {
  const p = new Provider(issuer, {
    clients: [{
      client_id: config.clientId,
      client_secret: config.clientSecret,
      redirect_uris: config.redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys },
    cookies: { keys: ['stoa-test-cookie-key'] },
    pkce: { required: () => true, methods: ['S256'] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', 'picture'],
    },
    findAccount: (ctx, id) => account(id),
    // Every sign-in asks for consent once; the test answers it.
    features: { devInteractions: { enabled: true } },
    ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Grant: 600, Interaction: 600, Session: 600 },
  });
  p.proxy = false;
  p.use(tamperIdToken);
  return p;
}

async function tamperIdToken(ctx, next) {
  await next();
  if (ctx.path !== '/token' || ctx.status !== 200 || !tamper || !ctx.body?.id_token) return;
  const changes = tamper;
  tamper = null;
  const claims = decodeJwt(ctx.body.id_token);
  const header = decodeProtectedHeader(ctx.body.id_token);
  const now = Math.floor(Date.now() / 1000);
  if (changes.iss !== undefined) claims.iss = changes.iss;
  if (changes.aud !== undefined) claims.aud = changes.aud;
  if (changes.azp !== undefined) claims.azp = changes.azp;
  if (changes.nonce !== undefined) claims.nonce = changes.nonce;
  if (changes.at_hash !== undefined) claims.at_hash = changes.at_hash;
  if (changes.exp !== undefined) claims.exp = now + changes.exp;
  if (changes.iat !== undefined) claims.iat = now + changes.iat;
  const key = changes.foreignKey ? await newKey() : keys[0];
  const signing = await importJWK(key, 'RS256');
  ctx.body = {
    ...ctx.body,
    id_token: await new SignJWT(claims)
      .setProtectedHeader({ ...header, alg: 'RS256', kid: key.kid })
      .sign(signing),
  };
}

function readBody(req) {
  return new Promise((resolve) => {
    let data = '';
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => resolve(data));
  });
}

const server = http.createServer(async (req, res) => {
  if (req.method === 'POST' && req.url.startsWith('/__test/')) {
    const body = await readBody(req);
    if (req.url.startsWith('/__test/rotate')) {
      const fresh = await newKey();
      keys = req.url.includes('keep=1') ? [fresh, ...keys] : [fresh];
      provider = build();
    } else if (req.url.startsWith('/__test/tamper')) {
      tamper = JSON.parse(body || '{}');
    } else {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(204).end();
    return;
  }
  provider.callback()(req, res);
});

server.listen(config.port ?? 0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  provider = build();
  console.log(`listening ${issuer}`);
});
