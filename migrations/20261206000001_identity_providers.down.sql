DROP TABLE IF EXISTS oauth_link_tickets;
DROP TABLE IF EXISTS oauth_handoffs;
DROP TABLE IF EXISTS oauth_flows;
DROP TABLE IF EXISTS user_identities;
